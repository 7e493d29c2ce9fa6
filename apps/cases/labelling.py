"""Expert labelling: the queue, verdicts, confirmation, disagreements and adjudication.

When a label is *confirmed* depends on ``settings.CXR_LABEL_POLICY``, with
k = ``settings.CXR_LABEL_AGREEMENT``:

- ``unanimous``: k readers gave the same verdict and none gave another. An image
  with conflicting verdicts is disputed until its readers revise to agree.
- ``majority``: at least k readers have read it and one verdict has more than half
  of all its readings. With k readings and no majority it is disputed and more
  readers are asked (a third reading breaks a 1-1 tie of two readers).
- ``adjudication``: as unanimous, and a disputed image is decided by an
  adjudicator (``adjudicate``), who sees every verdict with its note. The decision
  is final for the readers (their verdicts stay, for the statistics, and can no
  longer change); the adjudicator can decide again, and each decision is audited.

Disputed images stay first in every other reader's queue under every policy.
Confirmed labels (never predictions) feed the next dataset snapshot.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, TypedDict

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from apps.accounts.models import record
from apps.cases.models import (
    UNUSABLE,
    VERDICT_CHOICES,
    Adjudication,
    CaseImage,
    ExpertLabel,
    Prediction,
)

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Verdicts(TypedDict):  # what labelling_queue annotates each image with
        n_verdicts: int


VERDICTS = {value for value, _ in VERDICT_CHOICES}


class LabelRejected(Exception):  # noqa: N818 - reads as what happened
    pass


UNANIMOUS, MAJORITY, ADJUDICATION = "unanimous", "majority", "adjudication"
POLICIES = (UNANIMOUS, MAJORITY, ADJUDICATION)
NOTE_LIMIT = 2000


def confirmation(verdicts: list[str], *, policy: str, readers: int) -> str:
    """The verdict the policy confirms from these readings, or "" (see the module doc)."""
    counts = Counter(verdicts)
    if not counts:
        return ""
    verdict, n = counts.most_common(1)[0]
    if policy == MAJORITY:
        return verdict if len(verdicts) >= readers and 2 * n > len(verdicts) else ""
    return verdict if len(counts) == 1 and n >= readers else ""


def _confirmation(verdicts: list[str]) -> str:
    return confirmation(
        verdicts, policy=settings.CXR_LABEL_POLICY, readers=settings.CXR_LABEL_AGREEMENT
    )


def _check_verdict(label: str, note: str) -> None:
    if label not in VERDICTS:
        raise LabelRejected(
            f"Unknown label {label!r}; choose one of {', '.join(sorted(VERDICTS))}."
        )
    if len(note.strip()) > NOTE_LIMIT:
        raise LabelRejected(f"The note has {len(note.strip())} characters; at most {NOTE_LIMIT}.")


def _set_confirmed(image: CaseImage, label: str) -> str:
    """Store the image's confirmed label (and its unusable status); return the one before."""
    confirmed_before = image.confirmed_label
    image.confirmed_label = label
    image.confirmed_at = timezone.now() if label else None
    if label == UNUSABLE:
        image.status = CaseImage.Status.UNUSABLE
    elif confirmed_before == UNUSABLE:
        image.status = CaseImage.Status.ACCEPTED
    image.save(update_fields=["confirmed_label", "confirmed_at", "status"])
    return confirmed_before


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
        .select_related("case")  # the serialiser asks whose case it is (owners see its id)
        .prefetch_related("predictions__model_version", "explanations")
    )

    def need(image: WithAnnotations[CaseImage, _Verdicts]) -> tuple[int, float, int]:
        prediction = image.latest_prediction
        confidence = prediction.confidence if prediction and prediction.confidence else 1.0
        return (-(image.n_verdicts > 1), confidence, image.pk)

    ordered = sorted(images, key=need)
    return ordered


def disagreements() -> QuerySet[CaseImage]:
    """Images the policy calls disputed and nobody has decided yet: readers gave
    different verdicts (unanimous, adjudication), or k readings found no majority."""
    images = CaseImage.objects.filter(confirmed_label="").annotate(
        n_verdicts=Count("expert_labels__label", distinct=True),
        n_readings=Count("expert_labels", distinct=True),
    )
    if settings.CXR_LABEL_POLICY == MAJORITY:
        images = images.filter(n_readings__gte=settings.CXR_LABEL_AGREEMENT)
    else:
        images = images.filter(n_verdicts__gt=1)
    # Verdicts only: the annotators' names are for the adjudicator's page.
    return images.prefetch_related("expert_labels").order_by("pk")


@transaction.atomic
def submit_label(*, image: CaseImage, annotator, label: str, note: str = "") -> ExpertLabel:
    """Record (or revise) one reader's verdict and update the image's confirmation."""
    _check_verdict(label, note)
    image = CaseImage.objects.select_for_update().get(pk=image.pk)
    if not image.predictions.filter(status=Prediction.Status.DONE).exists():
        raise LabelRejected("This image has no finished prediction yet.")
    decided = Adjudication.objects.filter(image=image).first()
    if decided is not None:
        raise LabelRejected(
            f"This image was adjudicated ({decided.get_label_display()}); "
            "its verdicts can no longer change."
        )
    existing = ExpertLabel.objects.filter(image=image, annotator=annotator).first()
    before = {"label": existing.label, "note": existing.note} if existing else {}
    expert_label, _ = ExpertLabel.objects.update_or_create(
        image=image, annotator=annotator, defaults={"label": label, "note": note.strip()}
    )
    verdicts = list(image.expert_labels.values_list("label", flat=True))
    confirmed_before = _set_confirmed(image, _confirmation(verdicts))
    record(
        actor=annotator,
        action="label.change" if existing else "label.create",
        target=expert_label,
        before={**before, "confirmed": confirmed_before},
        after={"label": label, "note": expert_label.note, "confirmed": image.confirmed_label},
    )
    return expert_label


@transaction.atomic
def adjudicate(*, image: CaseImage, adjudicator, label: str, note: str = "") -> Adjudication:
    """The adjudicator's decision on a disputed image: it becomes the confirmed label.

    Refused unless the policy is "adjudication", the image is disputed (or was
    adjudicated before: deciding again replaces the decision), and the adjudicator
    gave no verdict on it as a reader. The audit event keeps every verdict the
    adjudicator saw, with its note.
    """
    _check_verdict(label, note)
    policy = settings.CXR_LABEL_POLICY
    if policy != ADJUDICATION:
        raise LabelRejected(
            f"The agreement policy is {policy}: disputes are settled by the readers, "
            "not adjudicated (CXR_LABEL_POLICY=adjudication turns adjudication on)."
        )
    image = CaseImage.objects.select_for_update().get(pk=image.pk)
    verdicts = list(image.expert_labels.order_by("created_at", "pk"))
    existing = Adjudication.objects.filter(image=image).first()
    if existing is None and len({v.label for v in verdicts}) < 2:
        raise LabelRejected(
            "This image is not disputed: only disagreeing verdicts go to adjudication."
        )
    if any(v.annotator_id == adjudicator.pk for v in verdicts):
        raise LabelRejected(
            "You gave a verdict on this image as a reader; another adjudicator must decide."
        )
    before = {"label": existing.label, "note": existing.note} if existing else {}
    decision, _ = Adjudication.objects.update_or_create(
        image=image,
        defaults={"adjudicator": adjudicator, "label": label, "note": note.strip()},
    )
    confirmed_before = _set_confirmed(image, label)
    record(
        actor=adjudicator,
        action="label.adjudicate",
        target=decision,
        before={
            **before,
            "confirmed": confirmed_before,
            "verdicts": [
                {"reader": v.annotator_id, "label": v.label, "note": v.note} for v in verdicts
            ],
        },
        after={"label": label, "note": decision.note, "confirmed": label},
    )
    return decision
