"""The PACS connection's Prometheus metrics, read from the database at scrape time
(the listener is a process of its own; every web process answers the same)."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily, Metric

HELP = (
    "PACS instances and result objects by outcome: received (stored as a case image), "
    "refused (never stored), returned (sent back to the PACS), pending, failed (gave up)"
)


def pacs_metrics() -> Iterator[Metric]:
    from apps.cases.models import CaseImage
    from apps.pacs.models import Refusal, ReturnedObject

    family = GaugeMetricFamily("cxr_pacs_instances", HELP, labels=["outcome"])
    family.add_metric(["received"], CaseImage.objects.filter(case__pacs_link__isnull=False).count())
    family.add_metric(["refused"], Refusal.objects.count())
    states = dict(
        ReturnedObject.objects.order_by()
        .values_list("state")
        .annotate(n=Count("pk"))
        .values_list("state", "n")
    )
    family.add_metric(["returned"], states.get(ReturnedObject.State.SENT, 0))
    family.add_metric(["pending"], states.get(ReturnedObject.State.PENDING, 0))
    family.add_metric(["failed"], states.get(ReturnedObject.State.FAILED, 0))
    yield family
