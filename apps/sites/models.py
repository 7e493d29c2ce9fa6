"""Sites (hospitals or departments), who belongs to which, and each site's operating
points per model version.

A site is where images come from and where a model is used: every user belongs to one
(``SiteMembership``), every case records its site (``apps.cases.models.Case.site``, the
uploader's), and a model admin can move a model version's operating point for one site
(``SiteOperatingPoint``) from that site's own confirmed labels. Change these rows only
through ``apps.sites.services`` (audited).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

DEFAULT_SLUG = "default"


class Site(models.Model):
    """A hospital or a department: its users, its cases, its operating points."""

    name = models.CharField(max_length=200, unique=True)
    slug = models.SlugField(max_length=50, unique=True)
    is_default = models.BooleanField(
        default=False,
        help_text="The site new accounts join until a site admin or superuser moves them "
        "(one site is the default; the migration put every existing account and case there).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="sites_one_default"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class SiteMembership(models.Model):
    """The one site a user belongs to."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="site_membership",
    )
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="memberships")
    since = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.user} at {self.site}"


class SiteOperatingPoint(models.Model):
    """Offsets added to a model version's log-probabilities for one site's predictions
    (``ml.models.local_validation.labels_at``), proposed from the site's confirmed labels
    for a target (e.g. COVID-19 sensitivity >= 0.90).

    Points of one site and version are numbered 1, 2, ...; at most one is active. Applying
    one makes it active and remembers the one it replaced (``previous``); rolling back
    makes that one active again (none: the model's own point). Rows are never deleted:
    each prediction names the point that made its label.
    """

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="operating_points")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, related_name="site_operating_points"
    )
    number = models.PositiveIntegerField(help_text="1, 2, ... per site and model version.")
    offsets = models.JSONField(help_text="Class -> offset added to its log-probability.")
    target = models.CharField(max_length=40)
    goal = models.FloatField()
    reached = models.BooleanField(help_text="The target's value reached the goal on the labels.")
    n_images = models.PositiveIntegerField(help_text="Labelled images it was proposed from.")
    figures = models.JSONField(
        default=dict, help_text="The proposal: every figure with its interval at these offsets."
    )
    previous = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        help_text="The point active when this one was applied (null: the model's own).",
    )
    active = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    rolled_back_at = models.DateTimeField(null=True, blank=True)
    rolled_back_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        ordering = ("-created_at", "-pk")
        constraints = [
            models.UniqueConstraint(
                fields=["site", "model_version", "number"], name="sites_point_numbered"
            ),
            models.UniqueConstraint(
                fields=["site", "model_version"],
                condition=Q(active=True),
                name="sites_one_active_point",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site} point {self.number} for model #{self.model_version_id}"

    @property
    def ordered_offsets(self) -> list[tuple[str, float]]:
        """The offsets in the model's class order (a jsonb column keeps no key order)."""
        classes = self.model_version.classes or sorted(self.offsets)
        order = [c for c in classes if c in self.offsets] + sorted(set(self.offsets) - set(classes))
        return [(c, float(self.offsets[c])) for c in order]

    @property
    def description(self) -> str:
        from ml.models.local_validation import FIGURE_NAMES

        return f"{FIGURE_NAMES.get(self.target, self.target)} >= {self.goal:.2f}"


class DriftObservation(models.Model):
    """The drift features (``ml.models.drift.FEATURES``) of one finished prediction, as
    its worker computed them: the OOD score, the lung-field area and the intensity inside
    the lungs, the top class and its probability. A feature that could not be computed is
    null. Recorded only for a version with a drift reference (``apps.sites.drift``)."""

    prediction = models.OneToOneField(
        "cases.Prediction", on_delete=models.CASCADE, related_name="drift_observation"
    )
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="drift_observations")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="drift_observations"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    features = models.JSONField(default=dict)

    class Meta:
        ordering = ("-created_at", "-pk")
        indexes = [models.Index(fields=["site", "model_version", "-created_at"])]

    def __str__(self) -> str:
        return f"drift features of prediction {self.prediction_id}"


class DriftCheck(models.Model):
    """One feature's drift at one site for one version, as one periodic check measured it
    on the site's rolling window against the version's reference: the series the drift
    page plots and the gauge ``cxr_site_drift{site,feature}`` reads (its newest PSI)."""

    class Level(models.TextChoices):
        NONE = "none", "No shift"
        MODERATE = "moderate", "Moderate shift"
        DRIFT = "drift", "Drift"
        TOO_FEW = "too few", "Too few images"

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="drift_checks")
    model_version = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.CASCADE, related_name="drift_checks"
    )
    feature = models.CharField(max_length=40)
    checked_at = models.DateTimeField(default=timezone.now, db_index=True)
    n_reference = models.PositiveIntegerField()
    n_recent = models.PositiveIntegerField()
    psi = models.FloatField(null=True, blank=True)
    ks = models.FloatField(null=True, blank=True)
    p_value = models.FloatField(null=True, blank=True)
    level = models.CharField(max_length=10, choices=Level.choices)
    window_start = models.DateTimeField(null=True, blank=True)
    notified = models.BooleanField(
        default=False, help_text="This check moved the feature into drift: model admins were told."
    )

    class Meta:
        ordering = ("-checked_at", "-pk")
        indexes = [models.Index(fields=["site", "model_version", "feature", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.site} {self.feature} {self.level} at {self.checked_at:%Y-%m-%d %H:%M}"
