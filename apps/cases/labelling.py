"""Expert labelling: the queue, verdicts, confirmation, disagreements and adjudication.

When a label is *confirmed* depends on the agreement policy in force,
``current_policy()`` (set by model admins on the web, ``set_policy``; until then
``settings.CXR_LABEL_POLICY`` with k = ``settings.CXR_LABEL_AGREEMENT``):

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from apps.accounts.models import note_digest, record
from apps.cases.models import (
    UNUSABLE,
    VERDICT_CHOICES,
    Adjudication,
    CaseImage,
    ExpertLabel,
    LabelPolicy,
    Prediction,
)
from cxrplatform.errors import Refused

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Verdicts(TypedDict):  # what labelling_queue annotates each image with
        n_verdicts: int


VERDICTS = {value for value, _ in VERDICT_CHOICES}


class LabelRejected(Refused):
    pass


UNANIMOUS, MAJORITY, ADJUDICATION = "unanimous", "majority", "adjudication"
POLICIES = (UNANIMOUS, MAJORITY, ADJUDICATION)
NOTE_LIMIT = 2000


@dataclass(frozen=True)
class Policy:
    """The agreement policy in force: its name, k, and where it was set."""

    name: str
    readers: int
    source: str  # "web" (a model admin set it) or "environment" (no row yet)
    updated_at: Any = None  # when it was last set on the web
    updated_by: str = ""  # who set it (username)

    def as_record(self) -> dict[str, Any]:
        """How provenance records and exports state it."""
        return {"policy": self.name, "readers_required": self.readers}


def current_policy() -> Policy:
    """The one place that says which agreement policy is in force.

    The row a model admin saved on the web (``set_policy``), else the environment's
    ``CXR_LABEL_POLICY`` and ``CXR_LABEL_AGREEMENT``: a deployment that never changes
    it on the web behaves as before. Read once per request or task (one query)."""
    row = LabelPolicy.objects.select_related("updated_by").filter(pk=LabelPolicy.SINGLETON).first()
    if row is None:
        return Policy(
            name=settings.CXR_LABEL_POLICY,
            readers=settings.CXR_LABEL_AGREEMENT,
            source="environment",
        )
    return Policy(
        name=row.policy,
        readers=row.readers,
        source="web",
        updated_at=row.updated_at,
        updated_by=row.updated_by.get_username() if row.updated_by else "",
    )


class PolicyRejected(Refused):
    pass


def _checked_readers(readers: Any) -> int:
    try:
        k = int(str(readers).strip())
    except ValueError:
        raise PolicyRejected(
            f"Readers (k) must be a whole number from 1 to {LabelPolicy.MAX_READERS}, "
            f"not {readers!r}."
        ) from None
    if not 1 <= k <= LabelPolicy.MAX_READERS:
        raise PolicyRejected(
            f"Readers (k) must be from 1 to {LabelPolicy.MAX_READERS}; {k} is out of range."
        )
    return k


@transaction.atomic
def set_policy(*, actor, policy: str, readers: Any) -> Policy:
    """Change the agreement policy (model admins, on the web); audited ``labels.policy``
    with the policy before and after. Refused, with nothing written, for an unknown
    policy or a k outside 1-10. It applies to the next verdict: labels confirmed
    before keep their confirmation (the statistics and snapshots say which policy is
    in force when they are read)."""
    name = str(policy).strip().lower()
    if name not in POLICIES:
        raise PolicyRejected(f"Unknown policy {policy!r}; choose one of {', '.join(POLICIES)}.")
    k = _checked_readers(readers)
    LabelPolicy.objects.select_for_update().filter(pk=LabelPolicy.SINGLETON).first()  # lock
    before = current_policy()
    row, _ = LabelPolicy.objects.update_or_create(
        pk=LabelPolicy.SINGLETON, defaults={"policy": name, "readers": k, "updated_by": actor}
    )
    record(
        actor=actor,
        action="labels.policy",
        target=row,
        before={"policy": before.name, "readers": before.readers, "source": before.source},
        after={"policy": name, "readers": k},
    )
    return current_policy()


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
    policy = current_policy()
    return confirmation(verdicts, policy=policy.name, readers=policy.readers)


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
    policy = current_policy()
    if policy.name == MAJORITY:
        images = images.filter(n_readings__gte=policy.readers)
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
    before = {"label": existing.label, **note_digest(existing.note)} if existing else {}
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
        after={
            "label": label,
            **note_digest(expert_label.note),
            "confirmed": image.confirmed_label,
        },
    )
    return expert_label


@transaction.atomic
def adjudicate(*, image: CaseImage, adjudicator, label: str, note: str = "") -> Adjudication:
    """The adjudicator's decision on a disputed image: it becomes the confirmed label.

    Refused unless the policy is "adjudication", the image is disputed (or was
    adjudicated before: deciding again replaces the decision), and the adjudicator
    gave no verdict on it as a reader. The audit event keeps every verdict the
    adjudicator saw, with its note's length and keyed hash (never a note's text: the
    audit log outlives an erased case).
    """
    _check_verdict(label, note)
    policy = current_policy().name
    if policy != ADJUDICATION:
        raise LabelRejected(
            f"The agreement policy is {policy}: disputes are settled by the readers, "
            "not adjudicated (a model admin turns adjudication on in the label policy "
            "settings)."
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
    before = {"label": existing.label, **note_digest(existing.note)} if existing else {}
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
                {"reader": v.annotator_id, "label": v.label, **note_digest(v.note)}
                for v in verdicts
            ],
        },
        after={"label": label, **note_digest(decision.note), "confirmed": label},
    )
    return decision
