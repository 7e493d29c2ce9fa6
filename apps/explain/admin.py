from django.contrib import admin

from apps.explain.models import Explanation


@admin.register(Explanation)
class ExplanationAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "method", "status", "created_at")
    list_filter = ("method", "status")
