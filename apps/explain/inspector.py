"""The model inspector: request an inspection (web) and compute it (worker).

An inspection shows, for one model version, one image and one layer, the first-layer
filters, the chosen layer's activation maps and every explanation method side by side
(``ml.explain``). The web process only creates the row and queues the task; the worker
loads the model (``apps.models.serving``) and imports ``ml`` / TensorFlow lazily.
"""

from __future__ import annotations

import logging
import time

from django.db import transaction
from django.db.models import Q

from apps.accounts.models import record
from apps.cases.models import CaseImage
from apps.explain.models import Explanation, Inspection, InspectionPicture
from apps.models.models import ModelVersion, ReferenceImage, SnapshotItem, Task
from cxrplatform.files import StoredFiles, store_file
from cxrplatform.jobs import JobResult, JobRunner, enqueue_job

log = logging.getLogger(__name__)

MAX_ACTIVATION_MAPS = 64


def inspectable_versions():
    # Classifiers only: the inspector's methods explain a class probability.
    return (
        ModelVersion.objects.filter(task=Task.CLASSIFICATION)
        .exclude(status=ModelVersion.Status.FAILED)
        .order_by("-pk")
    )


def reference_images():
    return ReferenceImage.objects.order_by("source", "original_name")


def training_case_images():
    """Clinicians' images that are training data: in a dataset snapshot (an annotator
    confirmed their label). Model admins have no case permission, so a case image
    outside every snapshot is its clinician's and the annotators', not theirs to
    inspect. Shown by id only: no patient reference."""
    in_snapshots = SnapshotItem.objects.filter(case_image__isnull=False).values("case_image_id")
    return CaseImage.objects.filter(pk__in=in_snapshots).order_by("-pk")


def visible_inspections():
    """Inspections of reference images and of case images that are training data; an
    earlier inspection of any other case image is hidden with its pictures."""
    return Inspection.objects.filter(
        Q(case_image__isnull=True) | Q(case_image__in=training_case_images())
    )


def image_key(image: ReferenceImage | CaseImage) -> str:
    """``ref-<pk>`` or ``case-<pk>``: the form's value and the audit log's name for it."""
    return f"{'ref' if isinstance(image, ReferenceImage) else 'case'}-{image.pk}"


def image_choice(value: str) -> ReferenceImage | CaseImage | None:
    """``ref-<pk>`` or ``case-<pk>`` from the form to the image row, or None."""
    kind, _, pk = (value or "").partition("-")
    if not pk.isdigit():
        return None
    if kind == "ref":
        return reference_images().filter(pk=int(pk)).first()
    if kind == "case":
        return training_case_images().filter(pk=int(pk)).first()
    return None


@transaction.atomic
def request_inspection(
    *, user, version: ModelVersion, image: ReferenceImage | CaseImage, layer: str = ""
) -> Inspection:
    inspection = Inspection.objects.create(
        model_version=version,
        reference_image=image if isinstance(image, ReferenceImage) else None,
        case_image=image if isinstance(image, CaseImage) else None,
        layer=layer.strip()[:200],
        requested_by=user,
    )
    record(
        actor=user,
        action="inspection.requested",
        target=inspection,
        after={"model_version": version.pk, "layer": inspection.layer, "image": image_key(image)},
    )
    enqueue_job(inspection)
    return inspection


@transaction.atomic
def picture_viewed(*, user, picture: InspectionPicture) -> None:
    """Audit a model admin's look at a clinician's image through the inspector (every
    picture of a case-image inspection shows the image: the input, or a map over it)."""
    inspection = picture.inspection
    image = inspection.case_image
    if image is None:
        return
    record(
        actor=user,
        action="inspector.image_viewed",
        target=image,
        after={"inspection": inspection.pk, "picture": picture.kind},
    )


class InspectionRunner(JobRunner[Inspection]):
    """Compute and store every picture of one inspection (rows of their own, so they are
    written in ``store``), then cache the version's layer list for the inspector form."""

    what = "The inspection"
    related = ("model_version", "reference_image", "case_image")
    pictures: list[tuple[str, str, bytes, dict[str, float]]]
    layers: list[str]

    def compute(self, inspection: Inspection) -> JobResult:
        from apps.cases.lungs import classifier_input
        from apps.models.serving import classifier_for
        from ml.data.preprocess import open_image
        from ml.explain.api import (
            METHODS,
            activation_grid,
            activation_maps,
            deletion_insertion,
            explain,
            filter_grid,
            grid_png,
            last_conv_layer,
            render_overlay,
            spatial_layers,
        )
        from ml.explain.render import display_image

        start = time.perf_counter()
        classifier = classifier_for(inspection.model_version)
        model = classifier.model
        self.layers = layers = spatial_layers(model)
        layer = inspection.layer or last_conv_layer(model)
        if layer not in layers:
            raise ValueError(f"Layer {layer!r} is not a feature-map layer of this model.")
        # The input as the prediction makes it (Classifier.prepare): for a model fed
        # the lung fields, the lung-masked crop.
        with inspection.image_file.open("rb") as fh:
            prepared = classifier_input(classifier, open_image(fh), inspection.case_image)
        x = prepared.x
        probabilities = dict(
            zip(
                classifier.classes,
                (float(p) for p in classifier.predict_array(x[None])[0]),
                strict=True,
            )
        )
        maps = activation_maps(model, x, layer)
        side = max(maps.shape[0], 1)
        pictures: list[tuple[str, str, bytes, dict[str, float]]] = [
            ("input", "Input as the model sees it", grid_png(display_image(x)[0], scale=2), {}),
            ("filters", "First convolution's filters", grid_png(filter_grid(model), scale=8), {}),
            (
                "activations",
                f"Activations of {layer} ({maps.shape[-1]} channels, strongest "
                f"{min(maps.shape[-1], MAX_ACTIVATION_MAPS)}, {maps.shape[0]}x{maps.shape[1]})",
                grid_png(
                    activation_grid(maps, max_maps=MAX_ACTIVATION_MAPS, order="strongest"),
                    scale=max(1, 64 // side),
                    cmap="viridis",
                ),
                {},
            ),
        ]
        labels = dict(Explanation.Method.choices)
        for method in METHODS:
            # Blanked outside the lungs: occlusion patches only what the model is shown.
            heatmap = explain(
                model, x, method, classes=classifier.classes, visible=prepared.visible
            )
            scores = deletion_insertion(model, x, heatmap.values, heatmap.target_class)
            title = f"{labels.get(method, method)}: {heatmap.target_label}"
            pictures.append(
                (
                    method,
                    title,
                    render_overlay(x[..., 0], heatmap.values, title=title),
                    {
                        "deletion_auc": round(scores["deletion_auc"], 4),
                        "insertion_auc": round(scores["insertion_auc"], 4),
                        "seconds": round(heatmap.seconds, 3),
                    },
                )
            )
        self.pictures = pictures
        return JobResult(
            fields={
                "layer": layer,
                "layers": layers,
                "results": {"probabilities": probabilities},
                "seconds": round(time.perf_counter() - start, 2),
            }
        )

    def store(self, inspection: Inspection, stored: StoredFiles) -> dict[str, object]:
        inspection.pictures.all().delete()  # a retried job starts clean
        for position, (kind, title, png, scores) in enumerate(self.pictures):
            picture = InspectionPicture(
                inspection=inspection, kind=kind, title=title, position=position, scores=scores
            )
            picture.file.name = store_file(picture, "file", f"{kind}.png", png, stored)
            picture.save()
        return {}

    def after_done(self, inspection: Inspection) -> None:
        # The layer list is fixed per version: cache it for the inspector form.
        version = inspection.model_version
        ModelVersion.objects.filter(pk=version.pk).update(
            card={**version.card, "inspector_layers": self.layers}
        )
