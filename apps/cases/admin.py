"""Django admin for cases, images, predictions and expert labels: read-only.

Cases and labels change only through the platform's services, which audit every change
(apps.accounts.models.record); an edit or delete here would bypass that record, so the
admin shows these rows and changes none of them (an auditor's trail of label and case
edits). Label corrections go through the labelling pages or the API.
"""

from django.contrib import admin

from apps.cases.models import Case, CaseImage, ExpertLabel, Prediction, Segmentation


class ReadOnlyAdminMixin:
    """View permission only: no add, change or delete, whatever the user's rights."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class CaseImageInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CaseImage
    extra = 0
    fields = ("id", "sha256", "width", "height", "source_format", "created_at")
    readonly_fields = fields


@admin.register(Case)
class CaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "owner", "modality", "patient_ref", "created_at")
    list_filter = ("modality",)
    search_fields = ("patient_ref",)
    inlines = (CaseImageInline,)


@admin.register(Prediction)
class PredictionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "image", "status", "label", "model_version", "created_at", "finished_at")
    list_filter = ("status", "label")


@admin.register(Segmentation)
class SegmentationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id", "image", "status", "lungs_found", "percent_affected", "model_version", "finished_at",
    )  # fmt: skip
    list_filter = ("status", "lungs_found")


@admin.register(ExpertLabel)
class ExpertLabelAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "image", "annotator", "label", "created_at")
    list_filter = ("label",)
