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
