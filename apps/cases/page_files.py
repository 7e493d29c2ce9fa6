"""The files a case or image page makes the browser load, for the page's one view event
(``case.viewed`` / ``image.viewed``: ``apps.accounts.audit.record_view``).

They mirror the ``<img>`` tags of ``templates/explain/_viewer.html`` (the image, its
finished heatmap layers, its lung outline), ``templates/cases/_ct_viewer.html`` (the
slice, its three mask layers, its Grad-CAM layer) and the CT slice strip (the slices
again); a case's study kind (``apps.cases.kinds``) names its viewer's result files
(``result_files``). Out of step, nothing goes unaudited: a file listed here and not on the page is
still named by the view event; a file on the page and not listed here is audited as
its own ``download.*`` event. ``tests/accounts/test_audit_views.py`` fetches every
``<img>`` of the rendered pages to keep the two in step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from apps.accounts.audit import ServedFile
from apps.cases.models import Case, CaseImage

if TYPE_CHECKING:
    from apps.cases.kinds import StudyKind

DONE = "done"
# The mask layers the CT viewer lays over a slice (cases:ct-layer), in its order.
CT_PAGE_LAYERS = ("ggo", "consolidation", "lung_outline")


def xray_result_files(image: CaseImage) -> list[ServedFile]:
    """What an X-ray's viewer loads of its result: the lung outline of its prediction."""
    prediction = image.latest_prediction
    if (
        prediction is not None
        and prediction.status == DONE
        and prediction.lungs_found
        and prediction.lung_mask
    ):
        return [ServedFile("lung_outline", prediction, image.pk)]
    return []


def ct_result_files(image: CaseImage) -> list[ServedFile]:
    """What a CT slice's viewer loads of its result: the mask layers of its segmentation."""
    segmentation = image.latest_segmentation
    if segmentation is not None and segmentation.status == DONE and segmentation.lungs_found:
        return [ServedFile("ct_layer", segmentation, image.pk, name) for name in CT_PAGE_LAYERS]
    return []


def image_files(
    image: CaseImage, *, kind: StudyKind | None = None, heatmaps: bool = True
) -> list[ServedFile]:
    """The files one image's viewer loads: ``kind``'s viewer (the case's study kind;
    None: the X-ray viewer, which the readers' pages draw), ``heatmaps`` unless the page
    is blind to the model's answer (a reader's or adjudicator's page)."""
    files = [ServedFile("image", image, image.pk)]
    files += (kind.result_files if kind is not None else xray_result_files)(image)
    if heatmaps:
        files += [
            ServedFile("heatmap_layer", explanation, image.pk)
            for explanation in image.current_explanations
            if explanation.status == DONE
        ]
    return files


def case_files(case: Case) -> list[ServedFile]:
    """The files a clinician's case page loads (images and results prefetched:
    ``apps.cases.access.own_cases``)."""
    kind = case.kind
    return [file for image in case.images.all() for file in image_files(image, kind=kind)]
