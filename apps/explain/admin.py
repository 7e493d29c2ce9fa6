from django.contrib import admin

from apps.explain.models import Explanation


@admin.register(Explanation)
class ExplanationAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "method", "status", "model_version", "seconds", "created_at")
    list_filter = ("method", "status")
    readonly_fields = tuple(f.name for f in Explanation._meta.fields)
