from django.contrib import admin

from apps.generator.models import GeneratorVersion, SampleGrid


@admin.register(GeneratorVersion)
class GeneratorVersionAdmin(admin.ModelAdmin):
    list_display = ("pk", "name", "sha256", "registered_at")
    readonly_fields = ("sha256", "card", "registered_at")


@admin.register(SampleGrid)
class SampleGridAdmin(admin.ModelAdmin):
    list_display = ("pk", "version", "label", "n", "seed", "status", "created_at")
    list_filter = ("status", "label")
    readonly_fields = ("sha256", "metadata", "image", "error")
