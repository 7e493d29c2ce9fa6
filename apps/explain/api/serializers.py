"""The API's representations of explanation jobs."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.api.links import absolute
from apps.explain.models import Explanation


class ExplanationSerializer(serializers.ModelSerializer):
    heatmap_url = serializers.SerializerMethodField(
        help_text="Raw float32 map as a NumPy .npy file; null until done."
    )
    overlay_url = serializers.SerializerMethodField(
        help_text="Overlay PNG with a colour scale; null until done."
    )
    scores = serializers.DictField(
        child=serializers.JSONField(),
        read_only=True,
        help_text="Faithfulness: deletion_auc, insertion_auc and their curves, and "
        "mass_in_lungs (share of the map's positive mass inside the image's lung mask, 0-1; "
        "null when the image has no lung mask); empty until done.",
    )

    class Meta:
        model = Explanation
        fields = [
            "id",
            "image",
            "method",
            "status",
            "error",
            "model_version",
            "target_label",
            "scores",
            "heatmap_url",
            "overlay_url",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_heatmap_url(self, explanation) -> str | None:
        if explanation.status != "done" or not explanation.heatmap:
            return None
        return absolute(self.context.get("request"), "explanation-heatmap", explanation.pk)

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_overlay_url(self, explanation) -> str | None:
        if explanation.status != "done" or not explanation.overlay:
            return None
        return absolute(self.context.get("request"), "explanation-overlay", explanation.pk)


class ExplanationRequestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=Explanation.Method.choices)
