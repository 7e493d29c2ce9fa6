"""A finished prediction or Grad-CAM of a PACS case queues the return of its results."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_save


def _queue_return(case_id: int) -> None:
    from apps.pacs.models import StudyLink
    from apps.pacs.tasks import return_results

    if not settings.CXR_PACS_DESTINATION:
        return
    if StudyLink.objects.filter(case_id=case_id, erased_at__isnull=True).exists():
        transaction.on_commit(lambda: return_results.delay(case_id))


def _prediction_saved(sender, instance, **kwargs) -> None:
    if instance.status == "done":
        _queue_return(instance.image.case_id)


def _explanation_saved(sender, instance, **kwargs) -> None:
    if instance.status in ("done", "failed"):
        _queue_return(instance.image.case_id)


def connect() -> None:
    from apps.cases.models import Prediction
    from apps.explain.models import Explanation

    post_save.connect(_prediction_saved, sender=Prediction, dispatch_uid="pacs-prediction")
    post_save.connect(_explanation_saved, sender=Explanation, dispatch_uid="pacs-explanation")
