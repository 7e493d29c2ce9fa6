"""Representations for the REST API. Read serializers only shape data; the write
serializers validate input and the views hand it to the services."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.cases.models import LABEL_CHOICES, VERDICT_CHOICES, Case, CaseImage, ExpertLabel
from apps.explain.models import Explanation
from apps.models.models import ModelVersion, TrainingRun


def _absolute(request, name: str, pk: int) -> str:
    url = reverse(f"api:{name}", args=[pk])
    return request.build_absolute_uri(url) if request is not None else url


# -- auth -------------------------------------------------------------------


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(read_only=True)


# -- predictions and explanations ---------------------------------------------


class ProbabilitiesSerializer(serializers.Serializer):
    covid19 = serializers.FloatField(min_value=0.0, max_value=1.0)
    pneumonia = serializers.FloatField(min_value=0.0, max_value=1.0)
    normal = serializers.FloatField(min_value=0.0, max_value=1.0)


class ModelVersionRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "name", "sha256"]
        read_only_fields = fields


class PredictionSerializer(serializers.Serializer):
    """SPEC §7: ``{label, probabilities{covid19, pneumonia, normal}, model_version}``."""

    id = serializers.IntegerField()
    status = serializers.CharField()
    # A field named "label" shadows Field.label (a str) in the DRF stubs.
    label = serializers.SerializerMethodField()  # type: ignore[assignment]
    probabilities = serializers.SerializerMethodField()
    model_version = ModelVersionRefSerializer(allow_null=True)
    error = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(
        serializers.ChoiceField(
            choices=LABEL_CHOICES, allow_null=True, help_text="Null until done."
        )
    )
    def get_label(self, prediction) -> str | None:
        return prediction.label or None

    @extend_schema_field(ProbabilitiesSerializer(allow_null=True, help_text="Null until done."))
    def get_probabilities(self, prediction) -> dict | None:
        return prediction.probabilities if prediction.status == "done" else None


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
        return _absolute(self.context.get("request"), "explanation-heatmap", explanation.pk)

    @extend_schema_field(serializers.URLField(allow_null=True))
    def get_overlay_url(self, explanation) -> str | None:
        if explanation.status != "done" or not explanation.overlay:
            return None
        return _absolute(self.context.get("request"), "explanation-overlay", explanation.pk)


class ExplanationRequestSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=Explanation.Method.choices)


# -- images and cases ---------------------------------------------------------


class LungsSerializer(serializers.Serializer):
    """The image's lung fields, from its newest finished prediction."""

    found = serializers.BooleanField(
        allow_null=True,
        help_text="A plausible pair of lung fields was found; null when segmentation did not "
        "run or failed (see message).",
    )
    message = serializers.CharField(
        help_text="Empty when found; else why not, e.g. 'lung fields not found: is this a "
        "frontal chest X-ray? (one region)'."
    )
    bbox = serializers.ListField(
        child=serializers.IntegerField(min_value=0),
        min_length=4,
        max_length=4,
        allow_null=True,
        help_text="[top, left, bottom, right] of the lungs in image pixels (bottom/right "
        "exclusive); null when not found.",
    )
    area_fraction = serializers.FloatField(
        min_value=0.0, max_value=1.0, allow_null=True, help_text="Lung pixels / image pixels."
    )
    segmenter_version = serializers.CharField(help_text="'lung-unet@<sha256 prefix>'.")
    mask_url = serializers.URLField(
        allow_null=True, help_text="8-bit PNG mask (255 = lung); null when not found."
    )
    outline_url = serializers.URLField(
        allow_null=True, help_text="Transparent PNG with the lung contour; null when not found."
    )


class ImageSerializer(serializers.ModelSerializer):
    """An image with its latest prediction and explanations; never a patient identifier."""

    file_url = serializers.SerializerMethodField()
    confirmed_label = serializers.ChoiceField(
        choices=VERDICT_CHOICES,
        allow_blank=True,
        read_only=True,
        help_text="Set once enough annotators agree; empty before.",
    )
    prediction = serializers.SerializerMethodField()
    lungs = serializers.SerializerMethodField()
    explanations = ExplanationSerializer(many=True, read_only=True)

    class Meta:
        model = CaseImage
        fields = [
            "id",
            "case",
            "width",
            "height",
            "source_format",
            "status",
            "confirmed_label",
            "created_at",
            "file_url",
            "prediction",
            "lungs",
            "explanations",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_file_url(self, image) -> str:
        return _absolute(self.context.get("request"), "image-file", image.pk)

    @extend_schema_field(PredictionSerializer(allow_null=True))
    def get_prediction(self, image) -> dict | None:
        prediction = image.latest_prediction
        return PredictionSerializer(prediction).data if prediction else None

    @extend_schema_field(
        LungsSerializer(allow_null=True, help_text="Null until the prediction is done.")
    )
    def get_lungs(self, image) -> dict | None:
        prediction = image.latest_prediction
        if prediction is None or prediction.status != "done":
            return None
        has_mask = bool(prediction.lungs_found and prediction.lung_mask)
        request = self.context.get("request")
        return {
            "found": prediction.lungs_found,
            "message": prediction.lung_message,
            "bbox": prediction.lung_bbox,
            "area_fraction": prediction.lung_area_fraction,
            "segmenter_version": prediction.segmenter_version,
            "mask_url": _absolute(request, "image-lung-mask", image.pk) if has_mask else None,
            "outline_url": (
                _absolute(request, "image-lung-outline", image.pk) if has_mask else None
            ),
        }


class CaseSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=Case.STATUS_CHOICES, read_only=True)
    images = ImageSerializer(many=True, read_only=True)

    class Meta:
        model = Case
        fields = ["id", "status", "patient_ref", "notes", "created_at", "updated_at", "images"]
        read_only_fields = fields


class CaseCreateSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False),
        allow_empty=False,
        help_text="One or more PNG, JPEG or DICOM chest radiographs (repeat the field).",
    )
    patient_ref = serializers.CharField(
        max_length=64,
        required=False,
        allow_blank=True,
        default="",
        help_text="Pseudonymous patient reference (never a name or a hospital ID).",
    )
    notes = serializers.CharField(max_length=5000, required=False, allow_blank=True, default="")


# -- labels -------------------------------------------------------------------


class LabelRequestSerializer(serializers.Serializer):
    # A field named "label" shadows Field.label (a str) in the DRF stubs.
    label = serializers.ChoiceField(choices=VERDICT_CHOICES)  # type: ignore[assignment]
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class ExpertLabelSerializer(serializers.ModelSerializer):
    confirmed_label = serializers.CharField(
        source="image.confirmed_label",
        read_only=True,
        help_text="The image's confirmed label once enough annotators agree; empty before.",
    )

    class Meta:
        model = ExpertLabel
        fields = ["id", "image", "label", "note", "confirmed_label", "created_at", "updated_at"]
        read_only_fields = fields


# -- model registry -----------------------------------------------------------


class ModelVersionSerializer(serializers.ModelSerializer):
    metrics = serializers.JSONField(read_only=True)
    card = serializers.JSONField(read_only=True)

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "sha256",
            "status",
            "metrics",
            "card",
            "snapshot",
            "parent",
            "created_at",
            "promoted_at",
        ]
        read_only_fields = fields


class PromoteRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class TrainingRunSerializer(serializers.ModelSerializer):
    percent = serializers.IntegerField(read_only=True, min_value=0, max_value=100)
    progress = serializers.JSONField(read_only=True)
    config = serializers.JSONField(read_only=True)
    comparison = serializers.JSONField(read_only=True)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "status",
            "error",
            "trigger",
            "snapshot",
            "config",
            "progress",
            "percent",
            "model_version",
            "comparison",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields
