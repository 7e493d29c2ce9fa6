from django.contrib import admin

from apps.models.models import ModelVersion


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "sha256", "created_at", "promoted_at")
    list_filter = ("status",)
    readonly_fields = ("sha256", "card", "created_at", "promoted_at", "status")
    search_fields = ("name", "sha256")
