from django.contrib import admin

from apps.cases.admin import ReadOnlyAdminMixin
from apps.explain.models import Explanation


@admin.register(Explanation)
class ExplanationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only, like the cases it explains (apps.cases.admin)."""

    list_display = ("id", "image", "method", "status", "model_version", "seconds", "created_at")
    list_filter = ("method", "status")
