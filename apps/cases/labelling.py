"""Expert labelling: the queue, verdicts, confirmation and disagreements.

A label is *confirmed* when ``settings.CXR_LABEL_AGREEMENT`` annotators gave
the same verdict and no annotator gave a different one; an image with
conflicting verdicts is listed for adjudication and its newest verdicts
decide once they agree. Confirmed labels (never predictions) feed the next
dataset snapshot.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from apps.accounts.models import record
from apps.cases.models import UNUSABLE, VERDICT_CHOICES, CaseImage, ExpertLabel, Prediction

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Verdicts(TypedDict):  # what labelling_queue annotates each image with
        n_verdicts: int


VERDICTS = {value for value, _ in VERDICT_CHOICES}


class LabelRejected(Exception):  # noqa: N818 - reads as what happened
    pass


def _confirmation(verdicts: list[str]) -> str:
    """The confirmed verdict, or "" while too few annotators agree or they disagree."""
    if not verdicts:
        return ""
    counts = Counter(verdicts)
    if len(counts) > 1:
        return ""
    verdict, n = counts.most_common(1)[0]
    return verdict if n >= settings.CXR_LABEL_AGREEMENT else ""


def labelling_queue(*, annotator) -> list[WithAnnotations[CaseImage, _Verdicts]]:
    """Images with a finished prediction and no confirmed label that this annotator
    has not judged yet, most in need first: disputed images, then the model's least
    confident predictions. Annotators never see patient identifiers (the queue
    carries images, not cases; templates and API serialisers show no patient_ref)."""
    done = Prediction.objects.filter(image=OuterRef("pk"), status=Prediction.Status.DONE)
    mine = ExpertLabel.objects.filter(image=OuterRef("pk"), annotator=annotator)
    images = (
        CaseImage.objects.filter(confirmed_label="", status=CaseImage.Status.ACCEPTED)
        .filter(Exists(done))
        .exclude(Exists(mine))
        .annotate(n_verdicts=Count("expert_labels__label", distinct=True))
        .prefetch_related("predictions__model_version", "explanations")
    )

    def need(image: WithAnnotations[CaseImage, _Verdicts]) -> tuple[int, float, int]:
        prediction = image.latest_prediction
        confidence = prediction.confidence if prediction and prediction.confidence else 1.0
        return (-(image.n_verdicts > 1), confidence, image.pk)

    ordered = sorted(images, key=need)
    return ordered


def disagreements() -> QuerySet[CaseImage]:
    """Images whose annotators gave different verdicts: for adjudication."""
    return (
        CaseImage.objects.filter(confirmed_label="")
        .annotate(n_verdicts=Count("expert_labels__label", distinct=True))
        .filter(n_verdicts__gt=1)
        .prefetch_related("expert_labels__annotator")
    )


@transaction.atomic
def submit_label(*, image: CaseImage, annotator, label: str, note: str = "") -> ExpertLabel:
    """Record (or change) one annotator's verdict and update the image's confirmation."""
    if label not in VERDICTS:
        raise LabelRejected(
            f"Unknown label {label!r}; choose one of {', '.join(sorted(VERDICTS))}."
        )
    image = CaseImage.objects.select_for_update().get(pk=image.pk)
    if not image.predictions.filter(status=Prediction.Status.DONE).exists():
        raise LabelRejected("This image has no finished prediction yet.")
    existing = ExpertLabel.objects.filter(image=image, annotator=annotator).first()
    before = {"label": existing.label, "note": existing.note} if existing else {}
    expert_label, _ = ExpertLabel.objects.update_or_create(
        image=image, annotator=annotator, defaults={"label": label, "note": note.strip()}
    )
    confirmed_before = image.confirmed_label
    verdicts = list(image.expert_labels.values_list("label", flat=True))
    image.confirmed_label = _confirmation(verdicts)
    image.confirmed_at = timezone.now() if image.confirmed_label else None
    if image.confirmed_label == UNUSABLE:
        image.status = CaseImage.Status.UNUSABLE
    elif confirmed_before == UNUSABLE:
        image.status = CaseImage.Status.ACCEPTED
    image.save(update_fields=["confirmed_label", "confirmed_at", "status"])
    record(
        actor=annotator,
        action="label.change" if existing else "label.create",
        target=expert_label,
        before={**before, "confirmed": confirmed_before},
        after={"label": label, "note": expert_label.note, "confirmed": image.confirmed_label},
    )
    return expert_label
