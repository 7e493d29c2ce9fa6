"""The kinds of study a case can be, as one table: a row per modality.

Everything that treats an X-ray case and a CT case differently reads the case's row
(``case.kind``, :func:`kind_of`) instead of asking which modality it is:

- ``job``: the job each image gets at upload (:meth:`StudyKind.start_job`: a
  classification of an X-ray, a segmentation of a CT slice), so the result its page and
  the API show; ``task``: the model registry task whose production version runs it;
- ``explain``: the explanation step the worker runs for an image of the kind
  (``apps.explain.jobs``), and ``explain_methods``, the methods it offers;
- ``template``: the case page; ``result_files``: what that page loads for one image
  besides the image and its heatmaps (``apps.cases.page_files``, audited with the view);
- ``name`` and ``label``: what users read ("CT" in a message, "Chest CT" on a page).

Which of an image's jobs is its result is one rule for every kind
(``apps.cases.models.current_job``). Adding a modality is adding a row here, with its
page's template (its value in ``Modality`` puts it in the upload form's and the API's
choices; a job of a new kind is a new job: ``cxrplatform.jobs``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db import models
from django.utils.module_loading import import_string

from apps.cases import page_files
from apps.cases.models import (
    Case,
    CaseImage,
    ImageJob,
    Modality,
    Prediction,
    Segmentation,
    current_job,
    newest_result,
)
from apps.explain.models import Explanation
from apps.models.models import Task
from cxrplatform.jobs import enqueue_job

if TYPE_CHECKING:
    from apps.accounts.audit import ServedFile
    from cxrplatform.jobs import JobResult


@dataclass(frozen=True)
class StudyKind:
    """One kind of study: what a case of it runs, offers and shows."""

    modality: str
    name: str  # one study of the kind in a sentence: "X-ray", "CT"
    label: str  # the kind on a page: "Chest X-ray", "Chest CT"
    job: type[ImageJob]
    task: str  # apps.models.models.Task: the production model that runs the job
    template: str
    result_files: Callable[[CaseImage], list[ServedFile]]
    explain: str  # dotted path of the step: (Explanation) -> JobResult
    explain_methods: tuple[str, ...]
    no_result_yet: str  # why an image of the kind cannot be explained yet
    method_refused: str  # why a method it does not offer is refused ({method}: its name)
    # One image of a study of the kind ("Image", "Slice"), and whether the images are a
    # series the reading viewer scrolls through (CT slices) rather than separate views.
    item: str = "Image"
    series: bool = False
    # The reading room: the dotted path of the study's priority step ((case) -> its
    # Priority), the viewer's window presets beyond the file's own ({name: (centre,
    # width)} in rescaled values), and the rescaled values' unit.
    priority: str = "apps.reading.services.xray_priority"
    window_presets: dict[str, tuple[float, float]] = field(default_factory=dict)
    units: str = ""

    def start_job(self, image: CaseImage) -> ImageJob:
        """Create the image's job and queue it once the transaction commits (a broker
        outage then does not undo the upload: the sweeper sends it)."""
        jobs: Any = self.job._default_manager  # a concrete ImageJob's, which has `image`
        job = jobs.create(image=image)
        enqueue_job(job)
        return job

    def jobs_of(self, image: CaseImage) -> models.Manager:
        """The image's jobs of this kind (the prefetched set, when prefetched)."""
        field = self.job._meta.get_field("image")  # type: ignore[misc]  # each kind's own
        return getattr(image, field.remote_field.get_accessor_name())

    def current_job(self, image: CaseImage) -> ImageJob | None:
        """The job the image's page shows (``apps.cases.models.current_job``)."""
        return current_job(self.jobs_of(image).all())

    def result_of(self, image: CaseImage) -> ImageJob | None:
        """The image's result (done) with its model version, or None."""
        return newest_result(self.jobs_of(image).select_related("model_version"))

    def explanation(self, explanation: Explanation) -> JobResult:
        """Compute the explanation by the kind's step (worker code)."""
        return import_string(self.explain)(explanation)

    @property
    def method_choices(self) -> list[tuple[str, str]]:
        """The explanation methods offered for an image of this kind, for a form."""
        return [(v, label) for v, label in Explanation.Method.choices if v in self.explain_methods]


KINDS: dict[str, StudyKind] = {
    Modality.XRAY: StudyKind(
        modality=Modality.XRAY,
        name="X-ray",
        label="Chest X-ray",
        job=Prediction,
        task=Task.CLASSIFICATION,
        template="cases/case_detail.html",
        result_files=page_files.xray_result_files,
        explain="apps.explain.jobs.xray_explanation",
        explain_methods=tuple(Explanation.Method.values),
        no_result_yet=(
            "This image has no finished prediction yet; explanations follow the prediction."
        ),
        method_refused="{method} is not offered for X-rays.",
    ),
    # Slices with mask layers, a strip of slices, Grad-CAM of the infection output.
    Modality.CT: StudyKind(
        modality=Modality.CT,
        name="CT",
        label="Chest CT",
        job=Segmentation,
        task=Task.CT_SEGMENTATION,
        template="cases/case_detail_ct.html",
        result_files=page_files.ct_result_files,
        explain="apps.explain.jobs.ct_explanation",
        explain_methods=(Explanation.Method.GRADCAM,),
        no_result_yet="This CT slice has no finished segmentation yet; its Grad-CAM follows it.",
        method_refused=(
            "For CT slices the explanation is Grad-CAM of the infection output; "
            "{method} is offered for X-rays only."
        ),
        item="Slice",
        series=True,
        priority="apps.reading.services.ct_priority",
        window_presets={"lung": (-600.0, 1500.0), "mediastinum": (40.0, 400.0)},
        units="HU",
    ),
}


def kind_of(case: Case | str) -> StudyKind:
    """The row of a case (or of a modality value); a LookupError for an unknown one."""
    modality = case if isinstance(case, str) else case.modality
    try:
        return KINDS[modality]
    except KeyError:
        raise LookupError(
            f"unknown modality {modality!r}; expected one of {', '.join(KINDS)}"
        ) from None
