from django.contrib import admin

from apps.cases.models import Case, CaseImage, ExpertLabel, Prediction


class CaseImageInline(admin.TabularInline):
    model = CaseImage
    extra = 0
    readonly_fields = ("file", "sha256", "width", "height", "source_format", "created_at")


@admin.register(Case)
class CaseAdmin(admin.ModelAdmin):
    list_display = ("id", "owner", "patient_ref", "created_at")
    search_fields = ("patient_ref",)
    inlines = (CaseImageInline,)


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "status", "label", "model_version", "created_at", "finished_at")
    list_filter = ("status", "label")
    readonly_fields = tuple(f.name for f in Prediction._meta.fields)


@admin.register(ExpertLabel)
class ExpertLabelAdmin(admin.ModelAdmin):
    list_display = ("id", "image", "annotator", "label", "created_at")
    list_filter = ("label",)
