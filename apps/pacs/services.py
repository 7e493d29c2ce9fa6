"""The return path: which results of a PACS case are ready, and sending them once."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from apps.accounts.models import record
from apps.cases.models import Prediction
from apps.pacs import returns
from apps.pacs.models import ReturnedObject, StudyLink
from apps.pacs.protect import unseal

log = logging.getLogger(__name__)

FINISHED = ("done", "failed")


class NotReady(Exception):  # noqa: N818 - a state, not an error
    """A result of the case is still being computed (its Grad-CAM)."""


def _explanation_of(prediction: Prediction):
    from apps.explain.models import Explanation
    from apps.explain.services import AUTOMATIC_METHOD

    return (
        Explanation.objects.filter(image=prediction.image, method=AUTOMATIC_METHOD)
        .order_by("-pk")
        .first()
    )


def ready_predictions(case_id: int) -> list[tuple[Prediction, object]]:
    """The case's finished predictions with their explanation (None when it failed);
    raises NotReady while an explanation is still pending or running."""
    ready = []
    predictions = (
        Prediction.objects.filter(image__case_id=case_id, status=Prediction.Status.DONE)
        .select_related("image", "model_version", "operating_point")
        .order_by("image_id", "-pk")
    )
    seen: set[int] = set()
    for prediction in predictions:
        if prediction.image_id in seen:
            continue  # the newest prediction of each image
        seen.add(prediction.image_id)
        explanation = _explanation_of(prediction)
        if explanation is not None and explanation.status not in FINISHED:
            raise NotReady(f"the Grad-CAM of image {prediction.image_id} is {explanation.status}")
        ready.append(
            (prediction, explanation if explanation and explanation.status == "done" else None)
        )
    return ready


def _objects_for(prediction: Prediction) -> list[ReturnedObject]:
    rows = []
    for kind in (ReturnedObject.Kind.SR, ReturnedObject.Kind.SC):
        row = ReturnedObject.objects.filter(prediction=prediction, kind=kind).first()
        if row is None:
            try:
                with transaction.atomic():
                    row = ReturnedObject.objects.create(
                        image_id=prediction.image_id,
                        prediction=prediction,
                        kind=kind,
                        sop_instance_uid=returns.new_uid(),
                        series_instance_uid=returns.new_uid(),
                    )
            except IntegrityError:  # another task made it first: use that one's UIDs
                row = ReturnedObject.objects.get(prediction=prediction, kind=kind)
        rows.append(row)
    return rows


def return_case(case_id: int) -> dict[str, int]:
    """Send the case's unsent results; {"sent": n, "already": m}. Raises NotReady while
    a result is being computed, SendFailedError when the destination did not take them (the
    rows keep their attempts and error; the task retries with backoff)."""
    target = returns.destination()
    link = StudyLink.objects.filter(case_id=case_id, erased_at__isnull=True).first()
    if target is None or link is None:
        return {"sent": 0, "already": 0}
    mapping = unseal(link.sealed)
    study = mapping["study"]
    datasets, rows, already = [], [], 0
    for prediction, explanation in ready_predictions(case_id):
        instance = mapping["images"].get(str(prediction.image_id), {})
        for row in _objects_for(prediction):
            if row.state == ReturnedObject.State.SENT:
                already += 1
                continue
            if row.kind == ReturnedObject.Kind.SR:
                ds = returns.build_sr(
                    study=study, instance=instance, prediction=prediction,
                    sop_uid=row.sop_instance_uid, series_uid=row.series_instance_uid,
                )  # fmt: skip
            else:
                ds = returns.build_sc(
                    study=study, instance=instance,
                    pixels=returns.picture_of(prediction, explanation),
                    sop_uid=row.sop_instance_uid, series_uid=row.series_instance_uid,
                )  # fmt: skip
            datasets.append(ds)
            rows.append(row)
    if not rows:
        return {"sent": 0, "already": already}
    ids = [row.pk for row in rows]
    try:
        returns.send(datasets, target)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"[:300]
        for row in rows:
            row.attempts += 1
            row.last_error = message
            if row.attempts >= settings.CXR_PACS_RETURN_MAX_ATTEMPTS:
                row.state = ReturnedObject.State.FAILED
            row.save(update_fields=["attempts", "last_error", "state"])
        log.warning(
            "return of case %s to %s failed: %s", case_id, returns.describe(target), message
        )
        raise returns.SendFailedError(message) from exc
    now = timezone.now()
    ReturnedObject.objects.filter(pk__in=ids).update(
        state=ReturnedObject.State.SENT, sent_at=now, last_error=""
    )
    ReturnedObject.objects.filter(pk__in=ids).update(attempts=rows[0].attempts + 1)
    record(
        actor=None,
        action="pacs.return",
        target=link.case,
        after={
            "destination": returns.describe(target),
            "objects": [{"kind": row.kind, "prediction": row.prediction_id} for row in rows],
        },
    )
    log.info("returned %d object(s) of case %s to %s", len(rows), case_id, returns.describe(target))
    return {"sent": len(rows), "already": already}


def gave_up(case_id: int) -> None:
    ReturnedObject.objects.filter(
        image__case_id=case_id, state=ReturnedObject.State.PENDING
    ).update(state=ReturnedObject.State.FAILED)


def purge_expired_links() -> int:
    """Erase the original identifiers of studies received more than
    ``CXR_PACS_MAPPING_RETENTION_DAYS`` ago (the case stays; nothing more is returned)."""
    cutoff = timezone.now() - timedelta(days=settings.CXR_PACS_MAPPING_RETENTION_DAYS)
    return StudyLink.objects.filter(received_at__lt=cutoff, erased_at__isnull=True).update(
        sealed=b"", erased_at=timezone.now()
    )
