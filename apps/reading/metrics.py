"""The reading room's metric: seconds from upload to the first signed report, per case
(a Prometheus histogram in the web process's registry, served by ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Histogram

# A report within minutes (an urgent read) up to days (a backlog).
BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800)

UPLOAD_TO_SIGNED = Histogram(
    "cxr_reading_upload_to_signed_seconds",
    "Seconds from a case's upload to its first signed report, by modality.",
    labelnames=["modality"],
    buckets=BUCKETS,
)


def observe_upload_to_signed(seconds: float, modality: str) -> None:
    UPLOAD_TO_SIGNED.labels(modality=modality).observe(max(seconds, 0.0))
