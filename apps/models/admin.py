from django.contrib import admin

from apps.models.models import DatasetSnapshot, ModelVersion, ReferenceImage, TrainingRun


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "status", "macro_f1", "snapshot", "created_at", "promoted_at")
    list_filter = ("status",)
    readonly_fields = (
        "sha256",
        "card",
        "metrics",
        "snapshot",
        "parent",
        "created_at",
        "promoted_at",
        "status",
        "operating_point",  # the registry's audited form only
    )
    search_fields = ("name", "sha256")

    @admin.display(description="macro-F1 (test)")
    def macro_f1(self, obj: ModelVersion) -> str:
        value = (obj.metrics or {}).get("macro_f1")
        return "—" if value is None else f"{value:.3f}"


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "trigger", "snapshot", "model_version", "created_at")
    list_filter = ("status", "trigger")
    readonly_fields = tuple(f.name for f in TrainingRun._meta.fields)


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ("id", "content_hash", "parent", "created_at", "created_by")
    readonly_fields = ("content_hash", "counts", "changes", "parent", "created_at", "created_by")


@admin.register(ReferenceImage)
class ReferenceImageAdmin(admin.ModelAdmin):
    list_display = ("id", "source", "original_name", "label", "patient")
    list_filter = ("source", "label")
