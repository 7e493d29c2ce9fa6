"""The reading room's rules: whose studies a radiologist sees, the worklist's priority,
reading status, and signed, versioned reports (one place for the pages and the API).

A radiologist sees the cases of their own site (``apps.sites.services.site_of``) and
nothing of another site: every lookup goes through :func:`site_cases`, so another
site's case is a 404. A signed report whose impression is one of the model's classes
enters the labelling pipeline as the radiologist's verdict on each of the case's
predicted images (``apps.cases.labelling.submit_label``: the agreement policy in force
decides when it confirms a label), so reading builds the training set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db import transaction
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404
from django.utils import timezone
from django.utils.module_loading import import_string

from apps.accounts.models import record
from apps.accounts.roles import CLINICIAN, RADIOLOGIST, has_role
from apps.cases.models import Case, CaseImage, Modality, Prediction
from apps.reading.metrics import observe_upload_to_signed
from apps.reading.models import Impression, Reading, ReadingStatus, Report, Urgency
from apps.sites.services import site_of
from cxrplatform.errors import Refused

# A study is flagged when the model's probability of an abnormal result (1 - normal) at
# the site's operating point reaches this, or its label there is COVID-19.
HIGH_PRIORITY = 0.5
WORKLIST_LIMIT = 200
TEXT_LIMIT = 5000
REASON_LIMIT = 1000
ORDERS = ("priority", "newest")


class ReportRefused(Refused):
    """A report that cannot be signed as asked (409 in the API)."""


def _images() -> Prefetch:
    return Prefetch(
        "images",
        queryset=CaseImage.objects.prefetch_related(
            "predictions__model_version",
            "predictions__operating_point",
            "segmentations",
            "explanations",
        ),
    )


def site_cases(user: Any) -> QuerySet[Case]:
    """The cases a radiologist may read: their site's, images and results prefetched."""
    if not has_role(user, RADIOLOGIST):
        return Case.objects.none()
    return (
        Case.objects.filter(site=site_of(user))
        .select_related("reading", "site", "owner")
        .prefetch_related(_images(), "reports")
    )


def study_for(user: Any, pk: int) -> Case:
    """The case ``pk`` of the radiologist's site; 404 for any other (never a 403: another
    site's study is not theirs to know of)."""
    case = site_cases(user).filter(pk=pk).first()
    if case is None:
        raise Http404("No such study at your site.")
    return case


def report_cases(user: Any) -> QuerySet[Case]:
    """Cases whose reports ``user`` may read: a clinician's own, a radiologist's site's."""
    condition = Q(pk__in=[])
    if has_role(user, CLINICIAN):
        condition |= Q(owner_id=user.pk)
    if has_role(user, RADIOLOGIST):
        condition |= Q(site=site_of(user))
    return Case.objects.filter(condition).prefetch_related("reports__author")


def image_for(user: Any, pk: int) -> CaseImage:
    """An image of a case of the radiologist's site; 404 otherwise."""
    image = (
        CaseImage.objects.filter(case__in=site_cases(user).values("pk"), pk=pk)
        .select_related("case")
        .first()
    )
    if image is None:
        raise Http404("No such image at your site.")
    return image


# --- priority -----------------------------------------------------------------------------


def at_site_point(prediction: Prediction) -> dict[str, float]:
    """The prediction's probabilities moved to the operating point that made its label
    (softmax of log-probability + the point's offsets); the model's own without one."""
    probabilities = {k: float(v) for k, v in (prediction.probabilities or {}).items()}
    point = prediction.operating_point
    if point is None or not probabilities:
        return probabilities
    offsets: Mapping[str, Any] = point.offsets or {}
    scores = {
        c: math.log(min(max(p, 1e-7), 1.0)) + float(offsets.get(c, 0.0))
        for c, p in probabilities.items()
    }
    top = max(scores.values())
    exps = {c: math.exp(s - top) for c, s in scores.items()}
    total = sum(exps.values())
    return {c: e / total for c, e in exps.items()}


@dataclass
class Priority:
    score: float | None  # 0..1, None: no result yet
    high: bool
    reason: str


def priority_of(case: Case) -> Priority:
    """The model's priority for a study, by its kind's priority step (the study-kind
    table, ``apps.cases.kinds``)."""
    return import_string(case.kind.priority)(case)


def ct_priority(case: Case) -> Priority:
    """A CT series: the largest share of lung affected on a slice (flagged from 10 %)."""
    best: Priority = Priority(None, False, "no result yet")
    for image in case.images.all():
        segmentation = image.latest_segmentation
        if segmentation is None or segmentation.status != "done":
            continue
        share = (segmentation.percent_affected or 0.0) / 100.0
        if best.score is None or share > best.score:
            best = Priority(share, share >= 0.10, f"{share:.0%} of lung affected")
    return best


def xray_priority(case: Case) -> Priority:
    """X-rays: the highest probability of abnormal (1 - normal) over the study's images at
    the site's operating point, flagged when that reaches :data:`HIGH_PRIORITY` or the
    label there is COVID-19."""
    best: Priority = Priority(None, False, "no result yet")
    for image in case.images.all():
        prediction = image.latest_prediction
        if prediction is None or prediction.status != Prediction.Status.DONE:
            continue
        probabilities = at_site_point(prediction)
        abnormal = 1.0 - probabilities.get("normal", 0.0)
        covid = probabilities.get("covid19", 0.0)
        high = abnormal >= HIGH_PRIORITY or prediction.label == "covid19"
        if best.score is None or abnormal > best.score:
            where = "site point" if prediction.operating_point_id else "model point"
            best = Priority(
                abnormal,
                high,
                f"abnormal {abnormal:.0%}, COVID-19 {covid:.0%} at the {where}",
            )
    return best


# --- worklist -----------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    status: str
    priority: Priority
    report: Report | None

    @property
    def status_display(self) -> str:
        return ReadingStatus(self.status).label


def status_of(case: Case) -> str:
    reading = getattr(case, "reading", None)
    return reading.status if reading is not None else ReadingStatus.NEW


def _date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None


def worklist(user: Any, params: Mapping[str, Any] | None = None) -> list[Row]:
    """The radiologist's site's studies (at most :data:`WORKLIST_LIMIT`, newest first),
    filtered by ``status``, ``modality``, ``date_from``/``date_to`` (YYYY-MM-DD) and
    ``priority`` ("high"), ordered by ``order``: "priority" (default; highest first, studies
    without a result last, newest first among equals) or "newest"."""
    params = params or {}
    cases = site_cases(user)
    modality = params.get("modality") or ""
    if modality in Modality.values:
        cases = cases.filter(modality=modality)
    if (since := _date(params.get("date_from"))) is not None:
        cases = cases.filter(created_at__date__gte=since)
    if (until := _date(params.get("date_to"))) is not None:
        cases = cases.filter(created_at__date__lte=until)
    status = params.get("status") or ""
    if status == ReadingStatus.NEW:
        cases = cases.filter(Q(reading__isnull=True) | Q(reading__status=status))
    elif status in ReadingStatus.values:
        cases = cases.filter(reading__status=status)
    rows = []
    for case in cases.order_by("-created_at", "-pk")[:WORKLIST_LIMIT]:
        reports = list(case.reports.all())
        rows.append(
            Row(
                case,
                status_of(case),
                priority_of(case),
                max(reports, key=lambda r: r.version) if reports else None,
            )
        )
    if params.get("priority") == "high":
        rows = [row for row in rows if row.priority.high]
    if (params.get("order") or "priority") == "priority":
        rows.sort(key=lambda row: -(row.priority.score if row.priority.score is not None else -1))
    return rows


def record_worklist_viewed(*, actor: Any, rows: list[Row], via: str) -> None:
    """The worklist shows patients' identifiers: one event naming the cases shown."""
    site = site_of(actor)
    record(
        actor=actor,
        action="reading.worklist_viewed",
        target=site,
        after={"cases": [row.case.pk for row in rows], "via": via},
    )


# --- reading status -----------------------------------------------------------------------


@transaction.atomic
def start_reading(*, actor: Any, case: Case) -> Reading:
    """Opening a study that is not reported puts it "in reading" by this radiologist."""
    reading, _ = Reading.objects.select_for_update().get_or_create(case=case)
    if reading.status != ReadingStatus.REPORTED:
        changed = reading.status != ReadingStatus.IN_READING or reading.reader_id != actor.pk
        reading.status = ReadingStatus.IN_READING
        reading.reader = actor
        reading.started_at = reading.started_at or timezone.now()
        reading.save()
        if changed:
            record(actor=actor, action="reading.started", target=case, after={})
    case.reading = reading
    return reading


def priors_of(case: Case) -> list[Case]:
    """The same patient's earlier studies at the same site (by the clinician's reference or
    the DICOM pseudonym), newest first."""
    keys = Q(pk__in=[])
    if case.patient_ref:
        keys |= Q(patient_ref=case.patient_ref)
    if case.patient_pseudonym:
        keys |= Q(patient_pseudonym=case.patient_pseudonym)
    return list(
        Case.objects.filter(keys, site_id=case.site_id, created_at__lt=case.created_at)
        .exclude(pk=case.pk)
        .prefetch_related(_images())
        .order_by("-created_at")[:10]
    )


# --- reports ------------------------------------------------------------------------------


def current_report(case: Case) -> Report | None:
    return case.reports.order_by("-version").first()


@dataclass
class Verdicts:
    entered: int  # images whose labelling got the radiologist's verdict
    skipped: list[str]  # why the others did not


def _enter_verdicts(*, actor: Any, case: Case, report: Report) -> Verdicts:
    """The report's impression as the radiologist's verdict on each predicted image."""
    from apps.cases.labelling import LabelRejected, submit_label

    if report.impression == Impression.OTHER:
        return Verdicts(0, ["'Other finding' is none of the model's classes."])
    entered, skipped = 0, []
    for image in CaseImage.objects.filter(case=case, status=CaseImage.Status.ACCEPTED):
        try:
            submit_label(
                image=image,
                annotator=actor,
                label=report.impression,
                note=f"Radiologist report v{report.version}.",
            )
            entered += 1
        except LabelRejected as exc:
            skipped.append(f"image {image.pk}: {exc}")
    return Verdicts(entered, skipped)


@transaction.atomic
def sign_report(
    *,
    actor: Any,
    case: Case,
    impression: str,
    text: str = "",
    urgency: str = Urgency.ROUTINE,
    amendment_reason: str = "",
) -> tuple[Report, Verdicts]:
    """Sign the next version of ``case``'s report (an amendment when one exists: it needs
    a reason, and earlier versions stay). The case becomes "reported"; the first signature
    records the seconds from upload to signed report. Audited ``report.signed`` or
    ``report.amended``. Refused (nothing written) for an unknown impression or urgency, a
    text too long, or an amendment without a reason."""
    if impression not in Impression.values:
        raise ReportRefused(
            f"Unknown impression {impression!r}; one of {', '.join(Impression.values)}."
        )
    if urgency not in Urgency.values:
        raise ReportRefused(f"Unknown urgency {urgency!r}; one of {', '.join(Urgency.values)}.")
    text, reason = (text or "").strip(), (amendment_reason or "").strip()
    if len(text) > TEXT_LIMIT:
        raise ReportRefused(f"The findings have {len(text)} characters; at most {TEXT_LIMIT}.")
    if len(reason) > REASON_LIMIT:
        raise ReportRefused(f"The reason has {len(reason)} characters; at most {REASON_LIMIT}.")
    reading, _ = Reading.objects.select_for_update().get_or_create(case=case)
    previous = case.reports.order_by("-version").first()
    if previous is not None and not reason:
        raise ReportRefused(
            f"This study has a signed report (version {previous.version}); an amendment "
            "needs its reason."
        )
    now = timezone.now()
    report = Report.objects.create(
        case=case,
        version=(previous.version + 1) if previous else 1,
        impression=impression,
        text=text,
        urgency=urgency,
        amendment_reason=reason if previous else "",
        author=actor,
        signed_at=now,
    )
    reading.status = ReadingStatus.REPORTED
    reading.reader = actor
    if reading.first_signed_at is None:
        reading.first_signed_at = now
        reading.upload_to_signed_seconds = (now - case.created_at).total_seconds()
        seconds = reading.upload_to_signed_seconds
        transaction.on_commit(lambda: observe_upload_to_signed(seconds, case.modality))
    reading.save()
    verdicts = _enter_verdicts(actor=actor, case=case, report=report)
    record(
        actor=actor,
        action="report.amended" if previous else "report.signed",
        target=report,
        before={"version": previous.version, "impression": previous.impression} if previous else {},
        after={
            "case": case.pk,
            "version": report.version,
            "impression": impression,
            "urgency": urgency,
            "verdicts_entered": verdicts.entered,
        },
    )
    return report, verdicts


def report_dict(report: Report) -> dict[str, Any]:
    return {
        "case": report.case_id,
        "version": report.version,
        "impression": report.impression,
        "impression_display": report.get_impression_display(),
        "text": report.text,
        "urgency": report.urgency,
        "amendment_reason": report.amendment_reason,
        "author": report.author.get_username(),
        "signed_at": report.signed_at.isoformat(),
    }
