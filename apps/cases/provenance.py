"""Where an image and its label come from: the one provenance record per clinical image.

Model admins read it on the web (``registry:image-provenance``) and through the API
(``GET /api/v1/images/{id}/provenance/``); dataset snapshots freeze its label part
(``label_provenance``) with every clinical item, and exports carry it.

Model admins hold no case permission: like the model inspector, they read the record
of an image that is training data only (in a dataset snapshot, its case not deleted;
:func:`readable_images`), and each read is audited (``provenance.viewed``). Readers'
free-text notes are the annotators' and the adjudicators' and stay on their pages: the
record says whether a verdict has a note, never its text.

File hashes are computed from storage when the record is read, next to the hash
recorded at upload, so the record also says whether the stored file is still the
one that was uploaded. No patient reference appears in it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.accounts.models import AuditEvent, record
from apps.accounts.roles import primary_role
from apps.cases.labelling import current_policy
from apps.cases.models import UNUSABLE, Adjudication, CaseImage, ExpertLabel

LABEL_ACTIONS = ("label.create", "label.change", "label.adjudicate")


def _when(value) -> str | None:
    return value.isoformat() if value else None


def _username(user) -> str:
    return user.get_username() if user is not None else "system"


def reader_ref(user) -> str:
    """How exports name a reader: a stable number, never a name."""
    return f"reader-{user.pk}" if user is not None else "system"


def label_provenance(image: CaseImage, *, name: Callable[[Any], str] = _username) -> dict:
    """The image's confirmed label and how it was reached: every reader's current
    verdict (whether it has a note, never the note's text) and the adjudicator's
    decision, under the agreement policy in force now. ``name`` says how readers are
    named (usernames on the model admins' pages, ``reader_ref`` in exports)."""
    verdicts = ExpertLabel.objects.filter(image=image).select_related("annotator")
    adjudication = Adjudication.objects.filter(image=image).select_related("adjudicator").first()
    confirmed = image.confirmed_label
    if not confirmed:
        decided_by = None
    elif adjudication is not None and adjudication.label == confirmed:
        decided_by = "adjudication"
    else:
        decided_by = "agreement"
    return {
        "confirmed_label": confirmed or None,
        "usable": confirmed != UNUSABLE,
        "confirmed_at": _when(image.confirmed_at),
        "decided_by": decided_by,
        **current_policy().as_record(),
        "verdicts": [
            {
                "reader": name(v.annotator),
                "label": v.label,
                "has_note": bool(v.note.strip()),
                "given_at": _when(v.created_at),
                "revised_at": _when(v.updated_at) if v.updated_at != v.created_at else None,
            }
            for v in verdicts.order_by("created_at", "pk")
        ],
        "adjudication": None
        if adjudication is None
        else {
            "adjudicator": name(adjudication.adjudicator),
            "label": adjudication.label,
            "has_note": bool(adjudication.note.strip()),
            "decided_at": _when(adjudication.updated_at),
        },
    }


def _hashes(image: CaseImage) -> dict:
    from apps.models.fingerprint import file_sha256

    def stored(field) -> str | None:
        try:
            return file_sha256(field)
        except (FileNotFoundError, OSError, ValueError):
            return None

    dicom = image.source_format == CaseImage.SourceFormat.DICOM
    file_hash = stored(image.file)
    hashes: dict[str, Any] = {
        # For a PNG or JPEG upload the recorded hash is the stored PNG's; for a DICOM
        # upload it is the de-identified DICOM's (the PNG is a rendition of it).
        "file_sha256": file_hash,
        "file_found": file_hash is not None,
        "original_sha256": None,
        "recorded_sha256": image.sha256,
    }
    if dicom:
        original = stored(image.original) if image.original else None
        hashes["original_sha256"] = original
        hashes["matches_upload"] = original == image.sha256
    else:
        hashes["matches_upload"] = file_hash == image.sha256
    return hashes


def _preprocessing(version) -> dict | None:
    if version is None:
        return None
    from ml.data.preprocess import PREPROCESSING_VERSION

    pre = (version.card or {}).get("preprocessing") or {}
    return {
        "version": pre.get("version", PREPROCESSING_VERSION),
        "input_size": pre.get("input_size"),
        "mask_outside": bool(pre.get("mask_outside")),
        "segmenter": (pre.get("segmenter") or {}).get("version"),
    }


def _model(version) -> dict | None:
    if version is None:
        return None
    return {"id": version.pk, "name": version.name, "sha256": version.sha256}


def _history(image: CaseImage, verdict_ids: list[int], name) -> list[dict]:
    targets = [("cases.ExpertLabel", str(pk)) for pk in verdict_ids]
    adjudication = Adjudication.objects.filter(image=image).values_list("pk", flat=True).first()
    if adjudication is not None:
        targets.append(("cases.Adjudication", str(adjudication)))
    events = AuditEvent.objects.none()
    for target_type, target_id in targets:
        events = events | AuditEvent.objects.filter(
            target_type=target_type, target_id=target_id, action__in=LABEL_ACTIONS
        )
    return [
        {
            "action": event.action,
            "by": name(event.actor),
            "at": _when(event.at),
            "label_before": event.before.get("label"),
            "label_after": event.after.get("label"),
            "confirmed_after": event.after.get("confirmed"),
        }
        for event in events.select_related("actor").order_by("at", "pk")
    ]


def without_notes(provenance: dict) -> dict:
    """A label provenance record without readers' note texts (records frozen in dataset
    snapshots before notes were left out of them still hold the texts)."""
    cleaned = {k: v for k, v in provenance.items() if k not in {"verdicts", "adjudication"}}
    if "verdicts" in provenance:
        cleaned["verdicts"] = [
            {k: v for k, v in verdict.items() if k != "note"} for verdict in provenance["verdicts"]
        ]
    if provenance.get("adjudication") is not None:
        cleaned["adjudication"] = {
            k: v for k, v in provenance["adjudication"].items() if k != "note"
        }
    elif "adjudication" in provenance:
        cleaned["adjudication"] = None
    return cleaned


def readable_images() -> QuerySet[CaseImage]:
    """The images whose provenance model admins may read: training data, as in the
    model inspector (``apps.explain.inspector.training_case_images``: in a dataset
    snapshot, its case not deleted). Any other clinical image is its clinician's and the
    annotators', not theirs."""
    from apps.explain.inspector import training_case_images

    return training_case_images()


@transaction.atomic
def provenance_viewed(*, user: Any, image: CaseImage, request: HttpRequest | None = None) -> dict:
    """The provenance of ``image`` (one of :func:`readable_images`) for a model admin,
    audited ``provenance.viewed`` (target: the image; client address and channel)."""
    from apps.accounts.audit import request_context

    record(actor=user, action="provenance.viewed", target=image, after=request_context(request))
    return image_provenance(image)


def image_provenance(image: CaseImage) -> dict:
    """The whole chain for one clinical image, oldest step first in each list."""
    from apps.models.models import SnapshotItem

    image = (
        CaseImage.objects.select_related("case__owner")
        .prefetch_related("predictions__model_version", "explanations__model_version")
        .get(pk=image.pk)
    )
    verdict_ids = list(ExpertLabel.objects.filter(image=image).values_list("pk", flat=True))
    snapshot_items = SnapshotItem.objects.filter(case_image=image).select_related("snapshot")
    return {
        "image": {
            "id": image.pk,
            "case": image.case_id,
            "source_format": image.source_format,
            "width": image.width,
            "height": image.height,
            "status": image.status,
            "uploaded_at": _when(image.created_at),
            "uploaded_by_role": primary_role(image.case.owner) or "none",
            **_hashes(image),
        },
        "predictions": [
            {
                "id": p.pk,
                "status": p.status,
                "label": p.label or None,
                "probabilities": p.probabilities,
                "model_version": _model(p.model_version),
                "preprocessing": _preprocessing(p.model_version),
                "segmenter_version": p.segmenter_version or None,
                "created_at": _when(p.created_at),
                "finished_at": _when(p.finished_at),
                "error": p.error,
            }
            for p in sorted(image.predictions.all(), key=lambda p: p.pk)
        ],
        "explanations": [
            {
                "id": e.pk,
                "method": e.method,
                "status": e.status,
                "params": e.params,
                "target_label": e.target_label or None,
                "layer": e.layer or None,
                "model_version": _model(e.model_version),
                "explainer_version": e.explainer_version or None,
                "mass_in_lungs": e.mass_in_lungs,
                "requested_by_role": primary_role(e.requested_by) if e.requested_by else None,
                "created_at": _when(e.created_at),
                "finished_at": _when(e.finished_at),
            }
            for e in sorted(image.explanations.all(), key=lambda e: e.pk)
        ],
        "label": label_provenance(image),
        "label_history": _history(image, verdict_ids, _username),
        "snapshots": [
            {
                "snapshot": item.snapshot_id,
                "created_at": _when(item.snapshot.created_at),
                "label": item.label,
                "split": item.split,
            }
            for item in snapshot_items.order_by("snapshot_id")
        ],
    }
