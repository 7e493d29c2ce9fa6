"""Sites: who belongs where, what a site admin may reach, local validation studies and
site operating points. The one API of the app: the pages, the REST API, the inference
runner and later features (drift monitoring) call these functions, never the models.

Membership. Every user belongs to one site (:func:`site_of`); every case records its
site (the uploader's, when the case is created). Clinicians still see only their own
cases; the site decides which accounts a site admin manages (:func:`manages`) and which
images a local validation study reads.

Local validation (:func:`validate`). The images of one site that carry a confirmed label
(the agreement policy's final label, ``apps.cases.labelling``; "unusable" is not a class)
and a finished prediction by the model version (its newest), measured with
``ml.models.local_validation``: every figure with its 95 % bootstrap interval, beside the
figures stored for the version's own test split.

Site operating points (:func:`propose`, :func:`apply_point`, :func:`roll_back`). The
offsets that reach a target (e.g. COVID-19 sensitivity >= 0.90) on the site's labels;
applying one makes the site's new predictions by that version take their label from the
raw probabilities at those offsets (:func:`label_for`), and rolling back restores the
point before. Audited: ``site.create``, ``site.member``, ``site.validation_viewed``,
``site.point_applied``, ``site.point_rolled_back``, ``auth.unlocked``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.text import slugify

from apps.accounts.models import record
from apps.accounts.roles import SITE_ADMIN, has_role
from apps.sites.models import DEFAULT_SLUG, Site, SiteMembership, SiteOperatingPoint
from cxrplatform.errors import Refused

if TYPE_CHECKING:
    import numpy as np

    from apps.cases.labelling import Policy
    from apps.models.models import ModelVersion
    from ml.models.local_validation import LocalValidation, SiteProposal

# Bootstrap resamples of a study (the figures' intervals); a fixed seed, so the same
# labels give the same page, CSV and API answer.
N_BOOTSTRAP = 1000
SEED = 0


class SiteRefused(Refused):
    """The request is well formed but the site's data or state do not allow it (409)."""


class SiteInputError(ValueError):
    """Input that is wrong whatever the state: an unknown target, a goal outside (0, 1]."""


# --- membership ---------------------------------------------------------------------------


def default_site() -> Site:
    """The site new accounts join (the migration made it; made again if it is gone)."""
    site = Site.objects.filter(is_default=True).first()
    if site is None:
        site, _ = Site.objects.get_or_create(
            slug=DEFAULT_SLUG, defaults={"name": "Default site", "is_default": True}
        )
    return site


def site_of(user: Any) -> Site:
    """The site ``user`` belongs to (the default site for an account without one)."""
    membership = SiteMembership.objects.select_related("site").filter(user_id=user.pk).first()
    return membership.site if membership is not None else default_site()


def site_id_of_user(user_id: int) -> int:
    """``site_of`` by the user's id, as an id (one query; for a case being saved)."""
    site_id = (
        SiteMembership.objects.filter(user_id=user_id).values_list("site_id", flat=True).first()
    )
    return site_id if site_id is not None else default_site().pk


def users_of(site: Site) -> QuerySet:
    """The accounts that belong to ``site``."""
    return get_user_model().objects.filter(site_membership__site=site)


def managed_sites(actor: Any) -> QuerySet[Site]:
    """The sites whose accounts ``actor`` manages: every site for a superuser, their own
    for a site admin, none for anyone else."""
    if getattr(actor, "is_superuser", False):
        return Site.objects.all()
    if has_role(actor, SITE_ADMIN):
        return Site.objects.filter(pk=site_of(actor).pk)
    return Site.objects.none()


def manages(actor: Any, user: Any) -> bool:
    """Whether ``actor`` may see and manage ``user``'s account (same site, or superuser)."""
    if getattr(actor, "is_superuser", False):
        return True
    return has_role(actor, SITE_ADMIN) and site_of(actor).pk == site_of(user).pk


def manageable_users(actor: Any) -> QuerySet:
    """The accounts ``actor`` may see on the users pages."""
    if getattr(actor, "is_superuser", False):
        return get_user_model().objects.all()
    if has_role(actor, SITE_ADMIN):
        return users_of(site_of(actor))
    return get_user_model().objects.none()


@transaction.atomic
def create_site(*, actor: Any, name: str, slug: str = "") -> Site:
    """A new site (superusers). Refused for an empty or taken name or slug."""
    name = " ".join(str(name).split())
    slug = slugify(slug or name)[:50]
    if not name or not slug:
        raise SiteInputError("Give the site a name (letters or digits).")
    if Site.objects.filter(name__iexact=name).exists() or Site.objects.filter(slug=slug).exists():
        raise SiteInputError(f"A site named {name!r} (or with the slug {slug!r}) exists already.")
    site = Site.objects.create(name=name, slug=slug)
    record(actor=actor, action="site.create", target=site, after={"name": name, "slug": slug})
    return site


@transaction.atomic
def set_site(*, actor: Any, user: Any, site: Site) -> bool:
    """Move ``user`` to ``site`` (audited ``site.member`` on the user); False when they
    are there already. Their existing cases keep the site they were made at."""
    membership, created = SiteMembership.objects.select_for_update().get_or_create(
        user=user, defaults={"site": site}
    )
    before = None if created else membership.site_id
    if not created and membership.site_id == site.pk:
        return False
    membership.site = site
    membership.save()
    record(
        actor=actor,
        action="site.member",
        target=user,
        before={"site": before},
        after={"site": site.pk, "site_name": site.name},
    )
    return True


# --- lockout -------------------------------------------------------------------------------


def locked_usernames(usernames: list[str]) -> set[str]:
    """The accounts among ``usernames`` that django-axes refuses now: their failed log-ins
    within the cool-off time (summed over the rows axes keeps per address and browser)
    reach the limit, as axes counts them."""
    from axes.models import AccessAttempt
    from django.db.models import Sum

    if not usernames:
        return set()
    since = timezone.now() - settings.AXES_COOLOFF_TIME
    totals = (
        AccessAttempt.objects.filter(username__in=usernames, attempt_time__gte=since)
        .values("username")
        .annotate(failures=Sum("failures_since_start"))
        .filter(failures__gte=settings.AXES_FAILURE_LIMIT)
    )
    return {row["username"] for row in totals}


@transaction.atomic
def unlock(*, actor: Any, user: Any) -> int:
    """Unlock ``user``'s account before its cool-off ends (a site admin of their site, or
    a superuser): django-axes forgets its failed log-ins. Audited ``auth.unlocked`` with
    the number of attempts forgotten. Refused when the account is not locked."""
    from axes.utils import reset

    if not manages(actor, user):
        from django.core.exceptions import PermissionDenied

        raise PermissionDenied("You can unlock only the accounts of your own site.")
    username = user.get_username()
    if username not in locked_usernames([username]):
        raise SiteRefused(f"{username}'s account is not locked.")
    forgotten = reset(username=username)
    record(
        actor=actor,
        action="auth.unlocked",
        target=user,
        after={"username": username, "attempts_forgotten": forgotten, "site": site_of(user).pk},
    )
    return forgotten


# --- the site's labelled images ------------------------------------------------------------


@dataclass(frozen=True)
class LabelledImage:
    """One image of a site with its confirmed label and the raw probabilities of the
    version's newest finished prediction of it."""

    image_id: int
    prediction_id: int
    label: str
    probabilities: Mapping[str, float]


def _check_classifier(version: ModelVersion) -> list[str]:
    from ml.models.local_validation import COVID, NORMAL

    classes = version.classes
    if not version.is_classifier or COVID not in classes or NORMAL not in classes:
        raise SiteRefused(
            f"#{version.pk} {version.name} is not a chest X-ray classifier with COVID-19 and "
            "normal classes: a local validation cannot be made for it."
        )
    return classes


def site_images_with_final_labels(site: Site, version: ModelVersion) -> list[LabelledImage]:
    """The images of ``site``'s cases (not deleted) whose confirmed label is one of the
    version's classes and that the version has a finished prediction of (the newest),
    in image order."""
    from apps.cases.models import Prediction

    classes = version.classes
    rows = (
        Prediction.objects.filter(
            status=Prediction.Status.DONE,
            model_version=version,
            image__case__site=site,
            image__case__deleted_at__isnull=True,
            image__confirmed_label__in=classes,
        )
        .order_by("image_id", "finished_at", "pk")  # the image's newest result last
        .values_list("image_id", "pk", "image__confirmed_label", "probabilities")
    )
    newest: dict[int, LabelledImage] = {}
    for image_id, prediction_id, label, probabilities in rows:
        newest[image_id] = LabelledImage(image_id, prediction_id, label, probabilities or {})
    return list(newest.values())


def labelled_without_prediction(site: Site, version: ModelVersion) -> int:
    """Images of ``site`` with a confirmed class label but no finished prediction by
    ``version`` (left out of its study: there is nothing of the model's to measure)."""
    from apps.cases.models import CaseImage, Prediction

    predicted = Prediction.objects.filter(status=Prediction.Status.DONE, model_version=version)
    return (
        CaseImage.objects.filter(case__site=site, confirmed_label__in=version.classes)
        .exclude(pk__in=predicted.values("image_id"))
        .count()
    )


def _arrays(images: list[LabelledImage], classes: list[str]) -> tuple[list[str], np.ndarray]:
    import numpy as np

    probs = np.asarray(
        [[float(image.probabilities.get(c, 0.0)) for c in classes] for image in images],
        dtype=np.float64,
    ).reshape(len(images), len(classes))
    return [image.label for image in images], probs


# --- the version's own test split ------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """A figure stored for the version (test split or card), with its interval if any."""

    value: float | None
    low: float | None = None
    high: float | None = None
    where: str = "test split"


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _from_confusion(matrix: Any) -> dict[str, Stored]:
    """COVID-19 specificity and NPV from a stored confusion matrix (no interval stored)."""
    if matrix is None or "covid19" not in matrix.labels:
        return {}
    k = matrix.labels.index("covid19")
    rows = [list(r) for r in matrix.matrix]
    total = sum(map(sum, rows))
    called = sum(r[k] for r in rows)  # images called COVID-19
    negatives = total - sum(rows[k])  # images without COVID-19
    true_negatives = negatives - (called - rows[k][k])
    out = {}
    if negatives:
        out["covid19_specificity"] = Stored(true_negatives / negatives)
    if total - called:
        out["covid19_npv"] = Stored(true_negatives / (total - called))
    return out


def stored_figures(version: ModelVersion) -> tuple[dict[str, Stored], dict[str, Stored]]:
    """The figures stored for the version's own test split, by the local validation's
    names (``figures`` and per-class ``recall``), never recomputed: accuracy, COVID-19
    sensitivity and PPV (its recall and precision), normals called normal (normal recall),
    COVID-19 AUROC (one vs the rest), ECE, and from the confusion matrix (when stored)
    COVID-19 specificity and NPV, without intervals. Where the model card records an
    operating point, its reached COVID-19 figures (validation split) fill what the test
    split lacks, marked as such."""
    figures: dict[str, Stored] = {}
    recall: dict[str, Stored] = {}
    evaluation = version.evaluation
    if evaluation is not None:
        if evaluation.accuracy is not None:
            figures["accuracy"] = Stored(evaluation.accuracy)
        if evaluation.ece is not None:
            figures["ece"] = Stored(evaluation.ece)
        for name, row in evaluation.per_class.items():
            low, high = row.recall_ci or (None, None)
            recall[name] = Stored(row.recall, low, high)
        covid = evaluation.per_class.get("covid19")
        if covid is not None:
            figures["covid19_sensitivity"] = recall["covid19"]
            low, high = covid.precision_ci or (None, None)
            figures["covid19_ppv"] = Stored(covid.precision, low, high)
            if covid.roc_auc is not None:
                figures["covid19_auroc"] = Stored(covid.roc_auc)
        if "normal" in recall:
            figures["normal_called_normal"] = recall["normal"]
        figures.update(_from_confusion(evaluation.confusion_matrix))
    reached = (version.card_point or {}).get("reached") or {}
    card_names = {
        "covid19_sensitivity": "covid19_sensitivity",
        "covid19_specificity": "covid19_specificity",
        "normal_specificity": "normal_called_normal",
    }
    for card_key, name in card_names.items():
        value = _finite(reached.get(card_key))
        if name not in figures and value is not None:
            figures[name] = Stored(value, where="card's operating point (validation split)")
    return figures, recall


# --- local validation ----------------------------------------------------------------------


@dataclass(frozen=True)
class SiteValidation:
    """A local validation study of one version at one site: the figures at the model's
    own point, and at the site's active point where one is applied."""

    site: Site
    version: ModelVersion
    classes: list[str]
    policy: Policy
    validation: LocalValidation
    at_site_point: LocalValidation | None
    point: SiteOperatingPoint | None
    test_split: dict[str, Stored]
    test_split_recall: dict[str, Stored]
    without_prediction: int
    test_counts: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The figures in display order, each with its site estimate(s) and the stored one."""
        from ml.models.local_validation import FIGURE_NAMES

        out = []
        for name, estimate in self.validation.figures.items():
            at_point = self.at_site_point.figures[name] if self.at_site_point else None
            out.append(
                {
                    "name": name,
                    "display": FIGURE_NAMES.get(name, name),
                    "site": estimate,
                    "at_point": at_point,
                    "stored": self.test_split.get(name),
                }
            )
        return out

    def recall_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "count": self.validation.counts.get(name, 0),
                "site": estimate,
                "at_point": self.at_site_point.recall[name] if self.at_site_point else None,
                "stored": self.test_split_recall.get(name),
                "test_count": self.test_counts.get(name),
            }
            for name, estimate in self.validation.recall.items()
        ]

    def to_dict(self) -> dict[str, Any]:
        def stored(value: Stored | None) -> dict[str, Any] | None:
            if value is None:
                return None
            return {
                "value": value.value,
                "low": value.low,
                "high": value.high,
                "where": value.where,
            }

        return {
            "site": {"id": self.site.pk, "name": self.site.name, "slug": self.site.slug},
            "model_version": {"id": self.version.pk, "name": self.version.name},
            "label_policy": self.policy.as_record(),
            "labelled_without_prediction": self.without_prediction,
            "validation": self.validation.to_dict(),
            "at_site_point": self.at_site_point.to_dict() if self.at_site_point else None,
            "site_point": point_dict(self.point) if self.point else None,
            "test_split": {
                "figures": {k: stored(v) for k, v in self.test_split.items()},
                "recall": {k: stored(v) for k, v in self.test_split_recall.items()},
                "counts": self.test_counts,
            },
        }


def validate(
    *, site: Site, version: ModelVersion, n_bootstrap: int | None = None
) -> SiteValidation:
    """The local validation study of ``version`` at ``site`` (reads only). Refused when
    the version is no COVID-19 classifier or the site has no labelled image that the
    version predicted."""
    from apps.cases.labelling import current_policy
    from ml.models.local_validation import local_validation

    classes = _check_classifier(version)
    images = site_images_with_final_labels(site, version)
    if not images:
        raise SiteRefused(_no_images(site, version))
    y_true, probs = _arrays(images, classes)
    n_bootstrap = N_BOOTSTRAP if n_bootstrap is None else n_bootstrap
    validation = local_validation(y_true, probs, classes, n_bootstrap=n_bootstrap, seed=SEED)
    point = active_point(site, version)
    at_point = None
    if point is not None:
        at_point = local_validation(
            y_true, probs, classes, offsets=point.offsets, n_bootstrap=n_bootstrap, seed=SEED
        )
    figures, recall = stored_figures(version)
    evaluation = version.evaluation
    counts = {k: v.support for k, v in evaluation.per_class.items()} if evaluation else {}
    return SiteValidation(
        site=site,
        version=version,
        classes=classes,
        policy=current_policy(),
        validation=validation,
        at_site_point=at_point,
        point=point,
        test_split=figures,
        test_split_recall=recall,
        without_prediction=labelled_without_prediction(site, version),
        test_counts=counts,
    )


def _no_images(site: Site, version: ModelVersion) -> str:
    missing = labelled_without_prediction(site, version)
    more = (
        f" ({missing} labelled image{'s' if missing != 1 else ''} there "
        f"{'have' if missing != 1 else 'has'} no prediction by this version)"
        if missing
        else ""
    )
    return (
        f"{site.name} has no image with a confirmed label and a prediction by "
        f"#{version.pk} {version.name}{more}: nothing to measure yet."
    )


def record_validation_viewed(
    *, actor: Any, study: SiteValidation, via: str, request: Any = None
) -> None:
    """Audit that ``actor`` read a study (``site.validation_viewed`` on the site)."""
    from apps.accounts.audit import request_context

    record(
        actor=actor,
        action="site.validation_viewed",
        target=study.site,
        after={
            "model_version": study.version.pk,
            "images": study.validation.n,
            "format": via,
            **request_context(request),
        },
    )


def reliability_figure(study: SiteValidation):
    """The reliability plot of the site's images (matplotlib's object API, no pyplot):
    each confidence bin's accuracy against its mean confidence, the point's area by its
    count, with the diagonal of a calibrated model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ml.models.evaluation import OKABE_ITO

    bins = study.validation.reliability
    figure = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle=":", color="#555555", linewidth=1.2, label="calibrated")
    if bins:
        total = sum(b["n"] for b in bins)
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            color=OKABE_ITO[0],
            linewidth=1.5,
        )
        ax.scatter(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            s=[30 + 300 * b["n"] / total for b in bins],
            color=OKABE_ITO[0],
            edgecolors="black",
            zorder=3,
            label="confidence bins (area: images)",
        )
    ece = study.validation.figures["ece"].value
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("mean confidence (top class)")
    ax.set_ylabel("share correct")
    what = f"{study.site.name}, n={study.validation.n}"
    if ece is not None:
        what += f", ECE {ece:.3f}"
    ax.set_title(f"Reliability: {what}", fontsize=10)
    ax.grid(color="#dddddd", linewidth=0.6)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    return figure


def to_csv(study: SiteValidation) -> str:
    """One row per figure: the site's value, interval, count and warning columns, and the
    stored test-split value beside it; then the class counts and the reliability bins."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "section", "name", "display", "value", "ci_low", "ci_high", "n", "of",
            "too_wide", "more_needed", "at_site_point", "test_split_value",
            "test_split_ci_low", "test_split_ci_high", "test_split_source",
        ]
    )  # fmt: skip

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    def row(section: str, name: str, display: str, estimate, at_point, stored) -> None:
        writer.writerow(
            [
                section, name, display, cell(estimate.value), cell(estimate.low),
                cell(estimate.high), estimate.n, estimate.of, int(estimate.too_wide),
                estimate.more_needed, cell(at_point.value) if at_point else "",
                cell(stored.value) if stored else "", cell(stored.low) if stored else "",
                cell(stored.high) if stored else "", stored.where if stored else "",
            ]
        )  # fmt: skip

    for item in study.rows():
        row("figure", item["name"], item["display"], item["site"], item["at_point"], item["stored"])
    for item in study.recall_rows():
        name = item["name"]
        row("recall", name, f"{name} recall", item["site"], item["at_point"], item["stored"])
    for name, count in study.validation.counts.items():
        writer.writerow(["count", name, f"{name} images", count, "", "", count, f"{name} images"])
    for number, b in enumerate(study.validation.reliability):
        writer.writerow(
            ["reliability", f"bin{number}", "accuracy at mean confidence", cell(b["accuracy"]),
             "", "", b["n"], f"confidence {b['confidence']:.4f}"]
        )  # fmt: skip
    for warning in study.validation.warnings:
        writer.writerow(["warning", "", warning])
    return out.getvalue()


# --- site operating points ------------------------------------------------------------------


def _checked_target(target: Any, goal: Any) -> tuple[str, float]:
    from ml.models.local_validation import TARGETS

    name = str(target).strip()
    if name not in TARGETS:
        raise SiteInputError(f"Unknown target {target!r}; choose one of {', '.join(TARGETS)}.")
    try:
        value = float(str(goal).strip())
    except ValueError:
        raise SiteInputError(f"The goal must be a share from 0 to 1, not {goal!r}.") from None
    if not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise SiteInputError(f"The goal must be a share in (0, 1], not {value:g}.")
    return name, value


def propose(
    *,
    site: Site,
    version: ModelVersion,
    target: Any,
    goal: Any,
    n_bootstrap: int | None = None,
) -> SiteProposal:
    """The offsets that reach ``target`` >= ``goal`` on the site's labels (reads only).
    :class:`SiteInputError` for an unknown target or a goal outside (0, 1];
    :class:`SiteRefused` when the site has no labelled images to measure it on."""
    from ml.models.local_validation import propose_site_point

    name, value = _checked_target(target, goal)
    classes = _check_classifier(version)
    images = site_images_with_final_labels(site, version)
    if not images:
        raise SiteRefused(_no_images(site, version))
    y_true, probs = _arrays(images, classes)
    try:
        return propose_site_point(
            y_true,
            probs,
            classes,
            target=name,
            goal=value,
            n_bootstrap=N_BOOTSTRAP if n_bootstrap is None else n_bootstrap,
            seed=SEED,
        )
    except ValueError as exc:  # e.g. no labelled COVID-19 image to measure sensitivity on
        raise SiteRefused(f"{site.name}: {exc}.") from None


def active_point(site: Site | int | None, version: ModelVersion | int) -> SiteOperatingPoint | None:
    """The operating point ``site`` serves ``version`` at (None: the model's own)."""
    if site is None:
        return None
    return (
        SiteOperatingPoint.objects.filter(site=site, model_version=version, active=True)
        .select_related("model_version")
        .first()
    )


def history(site: Site, version: ModelVersion) -> QuerySet[SiteOperatingPoint]:
    """Every point of ``site`` for ``version``, newest first."""
    return SiteOperatingPoint.objects.filter(site=site, model_version=version).select_related(
        "created_by", "rolled_back_by", "model_version"
    )


def point_dict(point: SiteOperatingPoint) -> dict[str, Any]:
    return {
        "id": point.pk,
        "site": point.site_id,
        "model_version": point.model_version_id,
        "number": point.number,
        "offsets": dict(point.ordered_offsets),
        "target": point.target,
        "goal": point.goal,
        "reached": point.reached,
        "n_images": point.n_images,
        "active": point.active,
        "previous": point.previous_id,
        "created_by": point.created_by.get_username() if point.created_by else None,
        "created_at": point.created_at.isoformat() if point.created_at else None,
        "rolled_back_at": point.rolled_back_at.isoformat() if point.rolled_back_at else None,
    }


def _same_offsets(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = set(a) | set(b)
    return all(abs(float(a.get(k, 0.0)) - float(b.get(k, 0.0))) <= 1e-9 for k in keys)


@transaction.atomic
def apply_point(
    *,
    actor: Any,
    site: Site,
    version: ModelVersion,
    target: Any,
    goal: Any,
    expected_offsets: Mapping[str, Any] | None = None,
    n_bootstrap: int | None = None,
) -> SiteOperatingPoint:
    """Propose again and make the proposal ``site``'s active point for ``version``: the
    site's next predictions by that version take their label at its offsets; other
    sites are untouched. ``expected_offsets``: the offsets the admin saw proposed;
    refused when the labels changed since and the proposal moved. Audited
    ``site.point_applied`` (before: the point replaced)."""
    proposal = propose(
        site=site, version=version, target=target, goal=goal, n_bootstrap=n_bootstrap
    )
    if expected_offsets is not None and not _same_offsets(expected_offsets, proposal.offsets):
        raise SiteRefused(
            "The site's labels changed since this proposal: the offsets are now "
            f"{_offsets_text(proposal.offsets)}. Propose again and check the figures."
        )
    # Lock the site's points of this version: two admins applying at once get numbers
    # one after the other, and one active point.
    current = list(
        SiteOperatingPoint.objects.select_for_update()
        .filter(site=site, model_version=version)
        .order_by("number")
    )
    previous = next((p for p in current if p.active), None)
    if previous is not None:
        previous.active = False
        previous.save(update_fields=["active"])
    point = SiteOperatingPoint.objects.create(
        site=site,
        model_version=version,
        number=(current[-1].number + 1) if current else 1,
        offsets=proposal.offsets,
        target=proposal.target,
        goal=proposal.goal,
        reached=proposal.reached,
        n_images=proposal.validation.n,
        figures=proposal.to_dict(),
        previous=previous,
        active=True,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    record(
        actor=actor,
        action="site.point_applied",
        target=point,
        before={"point": previous.pk if previous else None,
                "offsets": previous.offsets if previous else None},
        after={
            "site": site.pk,
            "model_version": version.pk,
            "number": point.number,
            "offsets": proposal.offsets,
            "target": proposal.target,
            "goal": proposal.goal,
            "reached": proposal.reached,
            "value": proposal.figure.value,
            "images": proposal.validation.n,
        },
    )  # fmt: skip
    return point


@transaction.atomic
def roll_back(*, actor: Any, site: Site, version: ModelVersion) -> SiteOperatingPoint | None:
    """Undo the site's active point for ``version``: the point it replaced is active
    again (None: the model's own point). Refused when the site has no point applied.
    Audited ``site.point_rolled_back``."""
    point = (
        SiteOperatingPoint.objects.select_for_update()
        .filter(site=site, model_version=version, active=True)
        .first()
    )
    if point is None:
        raise SiteRefused(
            f"{site.name} serves #{version.pk} {version.name} at the model's own point: "
            "there is no site point to roll back."
        )
    point.active = False
    point.rolled_back_at = timezone.now()
    point.rolled_back_by = actor if getattr(actor, "is_authenticated", False) else None
    point.save(update_fields=["active", "rolled_back_at", "rolled_back_by"])
    restored = None
    if point.previous_id is not None:
        restored = SiteOperatingPoint.objects.select_for_update().get(pk=point.previous_id)
        restored.active = True
        restored.save(update_fields=["active"])
    record(
        actor=actor,
        action="site.point_rolled_back",
        target=point,
        before={"point": point.pk, "offsets": point.offsets},
        after={
            "site": site.pk,
            "model_version": version.pk,
            "point": restored.pk if restored else None,
            "offsets": restored.offsets if restored else None,
        },
    )
    return restored


def _offsets_text(offsets: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {float(v):+.2f}" for k, v in offsets.items())


def label_for(
    *, site_id: int | None, version: ModelVersion, probabilities: Mapping[str, float]
) -> tuple[str | None, SiteOperatingPoint | None]:
    """The label of a prediction by ``version`` for a case of ``site_id``: at the site's
    active point, with that point; (None, None) when the site has none (the model's own
    label stands). The probabilities are never changed. Without a site point nothing
    beyond one query is paid (the inference worker stays lean)."""
    point = active_point(site_id, version)
    if point is None:
        return None, None
    import numpy as np

    from ml.models.local_validation import labels_at

    classes = version.classes
    row = np.asarray([[float(probabilities.get(c, 0.0)) for c in classes]])
    return classes[int(labels_at(row, classes, point.offsets)[0])], point
