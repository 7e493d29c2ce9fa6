"""Drift monitoring per site: how far a site's recent images and results have moved from
the model version's reference (``ml.models.drift``).

Recording. The inference worker computes each prediction's features
(:func:`features_of`) when the version has a reference, and stores them with the result
(:func:`record`, a :class:`~apps.sites.models.DriftObservation`). A version without a
reference records nothing (nothing to compare with): the worker then imports nothing of
this beyond a file check. A feature that cannot be computed is null; an error never
fails the prediction.

The reference (:func:`reference_for`): the ``drift-reference.json`` that
``python -m ml classifier drift-reference`` writes beside a model, found beside the
version's stored artifact or beside the bundled model file, and used only when its
``model_sha256`` is the version's.

Checking (:func:`check_all`, Celery beat every ``CXR_DRIFT_CHECK_SECONDS``). For each
site and the production classifier, the rolling window (the site's last
``CXR_DRIFT_WINDOW_PREDICTIONS`` observations within ``CXR_DRIFT_WINDOW_DAYS`` days) is
compared with the reference feature by feature: a :class:`~apps.sites.models.DriftCheck`
row each (the series the drift page plots and ``cxr_site_drift{site,feature}`` reads).
A feature that moves into "drift" tells the model admins once (e-mail, and the check is
marked ``notified``); it is told again only after it left "drift" and came back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.sites.models import DriftCheck, DriftObservation, Site
from ml.models.drift import FEATURES, REFERENCE_NAME

if TYPE_CHECKING:
    from PIL import Image

    from apps.cases.models import Prediction
    from apps.models.models import ModelVersion

log = logging.getLogger(__name__)

DRIFT = DriftCheck.Level.DRIFT


# --- the reference ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A version's reference features (its test split, sampled)."""

    model_sha256: str
    split: str
    n: int
    features: Mapping[str, list[Any]]
    source: str


_references: dict[tuple[int, str], Reference] = {}


def _candidates(version: ModelVersion) -> list[tuple[str, Any]]:
    """(description, opener) of the places a version's reference may be."""
    out: list[tuple[str, Any]] = []
    name = version.artifact.name if version.artifact else ""
    if name:
        folder = PurePosixPath(name).parent
        storage = version.artifact.storage
        for candidate in (
            folder / f"{PurePosixPath(name).stem}.{REFERENCE_NAME}",
            folder / REFERENCE_NAME,
        ):
            out.append((str(candidate), lambda c=str(candidate): _read_storage(storage, c)))
    for setting in ("CXR_BUNDLED_MODEL",):
        path = getattr(settings, setting, None)
        if path:
            beside = Path(path).parent / REFERENCE_NAME
            out.append((str(beside), lambda p=beside: p.read_bytes() if p.is_file() else None))
    return out


def _read_storage(storage: Any, name: str) -> bytes | None:
    if not storage.exists(name):
        return None
    with storage.open(name, "rb") as fh:
        return fh.read()


def reference_for(version: ModelVersion) -> Reference | None:
    """The drift reference of ``version`` (its sha256 checked), or None. Remembered per
    process once found; a missing one is looked for again next time (cheap: a few file
    checks)."""
    key = (version.pk, version.sha256)
    if key in _references:
        return _references[key]
    for where, read in _candidates(version):
        try:
            content = read()
            if content is None:
                continue
            data = json.loads(content)
        except (OSError, ValueError) as exc:
            log.warning("drift reference %s could not be read: %s", where, exc)
            continue
        if not isinstance(data, dict) or data.get("model_sha256") != version.sha256:
            continue
        features = data.get("features")
        if not isinstance(features, dict):
            continue
        reference = Reference(
            model_sha256=version.sha256,
            split=str(data.get("split", "")),
            n=int(data.get("n", 0)),
            features={k: list(v) for k, v in features.items() if isinstance(v, list)},
            source=where,
        )
        _references[key] = reference
        return reference
    return None


def forget_references() -> None:
    """Tests: look the references up again."""
    _references.clear()


# --- recording (the inference worker) --------------------------------------------------------


def features_of(
    *,
    version: ModelVersion,
    image: Image.Image,
    lungs: Any,
    probabilities: Mapping[str, float],
) -> dict[str, Any] | None:
    """The drift features of one classified image (``ml.models.drift.prediction_features``
    on its grayscale pixels, the segmenter's lung mask and the OOD gate's score), or None
    when the version has no reference. Never raises: what cannot be computed is null."""
    try:
        if reference_for(version) is None:
            return None
        from ml.data.preprocess import to_unit_gray
        from ml.models.drift import prediction_features

        gray = to_unit_gray(image)
        mask = getattr(lungs, "mask", None) if getattr(lungs, "found", False) else None
        if mask is not None and getattr(mask, "shape", None) != gray.shape:
            mask = None
        score = None
        try:
            score = _ood_score(gray)
        except Exception:
            log.warning("drift: the OOD score could not be computed", exc_info=True)
        return prediction_features(gray, mask, probabilities, score)
    except Exception:
        log.warning("drift: the features could not be computed", exc_info=True)
        return None


def _ood_score(gray: Any) -> float | None:
    """The upload gate's out-of-distribution score (None when the gate is off)."""
    from apps.cases.validation import ood_gate

    gate = ood_gate()
    return gate.score(gray) if gate is not None else None


def record(prediction: Prediction, version_id: int, features: Mapping[str, Any] | None) -> None:
    """Store ``features`` of ``prediction`` by the version ``version_id`` (in its result's
    transaction, in a savepoint: a failure here is logged and the prediction stands)."""
    if features is None:
        return
    try:
        with transaction.atomic():
            DriftObservation.objects.update_or_create(
                prediction=prediction,
                defaults={
                    "site_id": prediction.image.case.site_id,
                    "model_version_id": version_id,
                    "features": dict(features),
                },
            )
    except Exception:
        log.warning("drift: features of prediction %s not stored", prediction.pk, exc_info=True)


# --- checking ------------------------------------------------------------------------------


def window(
    site: Site | int, version: ModelVersion | int, *, at: datetime | None = None
) -> list[DriftObservation]:
    """The site's rolling window for ``version`` at ``at`` (default now): its newest
    ``CXR_DRIFT_WINDOW_PREDICTIONS`` observations of the last ``CXR_DRIFT_WINDOW_DAYS``."""
    at = at or timezone.now()
    since = at - timedelta(days=settings.CXR_DRIFT_WINDOW_DAYS)
    rows = DriftObservation.objects.filter(
        site=site, model_version=version, created_at__gt=since, created_at__lte=at
    ).order_by("-created_at", "-pk")
    return list(rows[: settings.CXR_DRIFT_WINDOW_PREDICTIONS])


def check_site(
    site: Site, version: ModelVersion, *, at: datetime | None = None, notify: bool = True
) -> list[DriftCheck]:
    """Compare the site's window with the version's reference and store one check per
    feature (none without a reference). A feature that moves into drift tells the model
    admins (``notify``)."""
    from ml.models.drift import compare

    reference = reference_for(version)
    if reference is None:
        return []
    at = at or timezone.now()
    observations = window(site, version, at=at)
    recent: dict[str, list[Any]] = {f: [] for f in FEATURES}
    for observation in observations:
        for feature in FEATURES:
            recent[feature].append((observation.features or {}).get(feature))
    figures = compare(reference.features, recent, min_images=settings.CXR_DRIFT_MIN_IMAGES)
    start = observations[-1].created_at if observations else None
    checks = []
    newly_drifting = []
    with transaction.atomic():
        for feature, drift in figures.items():
            before = (
                DriftCheck.objects.filter(
                    site=site, model_version=version, feature=feature, checked_at__lte=at
                )
                .order_by("-checked_at", "-pk")
                .values_list("level", flat=True)
                .first()
            )
            check = DriftCheck.objects.create(
                site=site,
                model_version=version,
                feature=feature,
                checked_at=at,
                n_reference=drift.n_reference,
                n_recent=drift.n_recent,
                psi=drift.psi,
                ks=drift.ks,
                p_value=drift.p_value,
                level=drift.level,
                window_start=start,
                notified=notify and drift.level == DRIFT and before != DRIFT,
            )
            checks.append(check)
            if check.notified:
                newly_drifting.append(check)
        if newly_drifting:
            ids = [c.pk for c in newly_drifting]
            transaction.on_commit(lambda: notify_model_admins(ids))
    return checks


def check_all(*, at: datetime | None = None) -> dict[str, Any]:
    """Celery beat: every site with observations of the production classifier in its
    window is checked. Returns what was checked (for the task's log)."""
    from apps.models.models import ModelVersion, Task

    version = ModelVersion.objects.production(task=Task.CLASSIFICATION)
    if version is None or reference_for(version) is None:
        return {"checked": 0, "reason": "no production classifier with a drift reference"}
    at = at or timezone.now()
    since = at - timedelta(days=settings.CXR_DRIFT_WINDOW_DAYS)
    site_ids = (
        DriftObservation.objects.filter(model_version=version, created_at__gt=since)
        .values_list("site_id", flat=True)
        .distinct()
    )
    drifting = {}
    for site in Site.objects.filter(pk__in=list(site_ids)):
        checks = check_site(site, version, at=at)
        drifting[site.slug] = [c.feature for c in checks if c.level == DRIFT]
    return {"checked": len(drifting), "model_version": version.pk, "drifting": drifting}


def notify_model_admins(check_ids: Iterable[int]) -> int:
    """Tell every model admin that these features of a site moved into drift (after the
    checks commit): a notification on the registry page, e-mailed to those with an
    address (a mail that fails is kept on the notification). Returns mails sent."""
    from apps.models import notifications

    checks = list(
        DriftCheck.objects.filter(pk__in=list(check_ids)).select_related("site", "model_version")
    )
    if not checks:
        return 0
    site, version = checks[0].site, checks[0].model_version
    url = settings.CXR_PUBLIC_URL + reverse("sites:drift", args=[site.pk])
    names = ", ".join(feature_name(c.feature) for c in checks)
    subject = f"{site.name}: drift in {names}"
    lines = [
        f"The images and results of {site.name} have moved away from the reference of "
        f"#{version.pk} {version.name} (its test split):",
        *(
            f"- {feature_name(c.feature)}: PSI {c.psi:.2f} over {c.n_recent} recent "
            f"predictions (drift above 0.25)"
            for c in checks
        ),
        "Check the site's equipment and processing, and its local validation.",
        f"The drift page: {url}",
    ]
    rows = notifications.site_drift(
        subject=subject, body="\n".join(lines), link=reverse("sites:drift", args=[site.pk])
    )
    sent = notifications.Notification.objects.filter(
        pk__in=[row.pk for row in rows], emailed_at__isnull=False
    ).count()
    log.warning(
        "drift at %s in %s: %d model admin(s) told, %d e-mailed", site.slug, names, len(rows), sent
    )
    return sent


# --- reading (page, API, metrics) -------------------------------------------------------------


def feature_name(feature: str) -> str:
    from ml.models.drift import FEATURE_NAMES

    return FEATURE_NAMES.get(feature, feature)


def latest_checks(site: Site, version: ModelVersion) -> list[DriftCheck]:
    """The newest check of each feature, in display order."""
    newest: dict[str, DriftCheck] = {}
    rows = DriftCheck.objects.filter(site=site, model_version=version).order_by(
        "feature", "-checked_at", "-pk"
    )
    for check in rows:
        newest.setdefault(check.feature, check)
    return [newest[f] for f in FEATURES if f in newest]


def series(site: Site, version: ModelVersion, feature: str) -> list[DriftCheck]:
    """Every check of one feature, oldest first."""
    return list(
        DriftCheck.objects.filter(site=site, model_version=version, feature=feature).order_by(
            "checked_at", "pk"
        )
    )


def current_levels() -> list[tuple[str, str, float]]:
    """(site slug, feature, PSI) of the newest check of each site and feature for the
    production classifier, where a PSI was measured (the gauge's values)."""
    from apps.models.models import ModelVersion, Task

    version = ModelVersion.objects.production(task=Task.CLASSIFICATION)
    if version is None:
        return []
    out = []
    seen: set[tuple[int, str]] = set()
    rows = (
        DriftCheck.objects.filter(model_version=version)
        .order_by("site_id", "feature", "-checked_at", "-pk")
        .values_list("site_id", "site__slug", "feature", "psi")
    )
    for site_id, slug, feature, psi in rows:
        if (site_id, feature) in seen:
            continue
        seen.add((site_id, feature))
        if psi is not None:
            out.append((slug, feature, float(psi)))
    return out


def _chance_psi(reference: Reference | None, feature: str, n: int) -> float | None:
    """About the PSI that chance alone gives ``n`` recent values drawn from the reference
    itself: (bins - 1) / n (n x PSI is about chi-squared with bins - 1 degrees of freedom).
    A PSI near it says nothing; it falls below the moderate line from about 90 values."""
    if reference is None or n <= 0:
        return None
    if feature == "predicted_class":
        bins = len({str(v) for v in reference.features.get(feature, []) if v is not None})
    else:
        bins = 10  # the reference's deciles (ml.models.drift)
    return round(max(bins - 1, 1) / n, 3)


def report(site: Site, version: ModelVersion | None) -> dict[str, Any]:
    """What the drift page and API show: the reference, the window, the newest check of
    each feature."""
    reference = reference_for(version) if version is not None else None
    latest = latest_checks(site, version) if version is not None else []
    size = len(window(site, version)) if version is not None else 0
    return {
        "site": {"id": site.pk, "name": site.name, "slug": site.slug},
        "model_version": (
            {"id": version.pk, "name": version.name} if version is not None else None
        ),
        "reference": (
            {"split": reference.split, "n": reference.n} if reference is not None else None
        ),
        "window": {
            "predictions": settings.CXR_DRIFT_WINDOW_PREDICTIONS,
            "days": settings.CXR_DRIFT_WINDOW_DAYS,
            "min_images": settings.CXR_DRIFT_MIN_IMAGES,
            "in_window_now": size,
            "check_minutes": max(1, settings.CXR_DRIFT_CHECK_SECONDS // 60),
        },
        "thresholds": {"moderate": 0.10, "drift": 0.25},
        "features": [
            {
                "feature": c.feature,
                "name": feature_name(c.feature),
                "level": c.level,
                "psi": c.psi,
                "ks": c.ks,
                "p_value": c.p_value,
                "n_recent": c.n_recent,
                "n_reference": c.n_reference,
                "chance_psi": _chance_psi(reference, c.feature, c.n_recent),
                "checked_at": c.checked_at,
                "notified": DriftCheck.objects.filter(
                    site=site, model_version=version, feature=c.feature, notified=True
                ).exists(),
            }
            for c in latest
        ],
    }


def drift_figure(site: Site, version: ModelVersion, feature: str):
    """One feature's PSI over time at a site (matplotlib's object API, no pyplot), with
    the moderate (0.1) and drift (0.25) lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ml.models.drift import PSI_DRIFT, PSI_MODERATE
    from ml.models.evaluation import OKABE_ITO

    checks = [c for c in series(site, version, feature) if c.psi is not None]
    figure = Figure(figsize=(6, 2.6), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    top = max([PSI_DRIFT * 1.6, *(c.psi * 1.45 for c in checks if c.psi is not None)])
    ax.axhspan(PSI_DRIFT, top, color=OKABE_ITO[1], alpha=0.10, linewidth=0)
    ax.axhline(
        PSI_MODERATE, color=OKABE_ITO[4], linestyle=":", linewidth=1.4, label="moderate 0.10"
    )
    ax.axhline(PSI_DRIFT, color=OKABE_ITO[1], linestyle="--", linewidth=1.4, label="drift 0.25")
    if checks:
        times: list[Any] = [c.checked_at for c in checks]
        ax.plot(
            times,
            [float(c.psi or 0.0) for c in checks],
            color=OKABE_ITO[0],
            marker="o",
            markersize=4,
            linewidth=1.5,
            label="PSI",
        )
        figure.autofmt_xdate(rotation=25)
    else:
        ax.text(0.5, 0.5, "no check with enough images yet", ha="center", va="center",
                transform=ax.transAxes, color="#555555")  # fmt: skip
    ax.set_ylim(0, top)
    ax.set_ylabel("PSI vs reference")
    ax.set_title(f"{feature_name(feature)}: {site.name}", fontsize=10)
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(loc="upper left", fontsize=8, ncols=3, framealpha=0.9)
    return figure
