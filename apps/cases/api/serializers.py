"""The API's representations of cases, images, their predictions and CT segmentations,
and expert labels. Read serializers only shape data; the write serializers validate
input and the views hand it to the services."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.api.links import absolute
from apps.cases.access import case_id_for, image_ref
from apps.cases.models import (
    CT_MASK_KINDS,
    LABEL_CHOICES,
    VERDICT_CHOICES,
    Case,
    CaseImage,
    ExpertLabel,
    Modality,
    Segmentation,
)
from apps.explain.api.serializers import ExplanationSerializer
from apps.models.api.serializers import ModelVersionRefSerializer

# -- predictions ----------------------------------------------------------------


class ProbabilitiesSerializer(serializers.Serializer):
    covid19 = serializers.FloatField(min_value=0.0, max_value=1.0)
    pneumonia = serializers.FloatField(min_value=0.0, max_value=1.0)
    normal = serializers.FloatField(min_value=0.0, max_value=1.0)


class PredictionSerializer(serializers.Serializer):
    """The prediction as the API returns it:
    ``{label, probabilities{covid19, pneumonia, normal}, model_version}``."""

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


class SegmentationMasksSerializer(serializers.Serializer):
    lungs = serializers.URLField(help_text="8-bit PNG, 255 = lung.")
    ggo = serializers.URLField(help_text="8-bit PNG, 255 = ground-glass opacity.")
    consolidation = serializers.URLField(help_text="8-bit PNG, 255 = consolidation.")
    infection = serializers.URLField(help_text="8-bit PNG, 255 = either lesion class.")
    lung_outline = serializers.URLField(help_text="8-bit PNG, 255 = the lung contour.")


class SegmentationSerializer(serializers.ModelSerializer):
    """A CT slice's segmentation: masks and figures (areas in pixels of the slice)."""

    model_version = ModelVersionRefSerializer(allow_null=True, read_only=True)
    lungs_found = serializers.BooleanField(
        allow_null=True,
        read_only=True,
        help_text="False for a slice with no lung tissue (e.g. an abdomen slice: see "
        "`message`); null until done.",
    )
    percent_affected = serializers.FloatField(
        allow_null=True,
        read_only=True,
        min_value=0.0,
        max_value=100.0,
        help_text="Infected share of the lung area (ground-glass or consolidation), in "
        "percent; null until done or when no lungs were found.",
    )
    percent_ggo = serializers.FloatField(
        allow_null=True, read_only=True, min_value=0.0, max_value=100.0
    )
    percent_consolidation = serializers.FloatField(
        allow_null=True, read_only=True, min_value=0.0, max_value=100.0
    )
    masks = serializers.SerializerMethodField()

    class Meta:
        model = Segmentation
        fields = [
            "id",
            "image",
            "status",
            "error",
            "model_version",
            "segmenter_version",
            "lungs_found",
            "message",
            "lung_area",
            "infection_area",
            "ggo_area",
            "consolidation_area",
            "percent_affected",
            "percent_ggo",
            "percent_consolidation",
            "max_infection_probability",
            "inference_ms",
            "masks",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(SegmentationMasksSerializer(allow_null=True, help_text="Null until done."))
    def get_masks(self, segmentation) -> dict | None:
        if segmentation.status != "done" or not segmentation.lung_mask:
            return None
        request = self.context.get("request")
        return {
            kind: absolute(request, "image-segmentation-mask", segmentation.image_id, kind)
            for kind in CT_MASK_KINDS
        }


class ImageSerializer(serializers.ModelSerializer):
    """An image with its latest prediction (X-ray) or segmentation (CT slice) and
    explanations; never a patient identifier."""

    case = serializers.SerializerMethodField(
        help_text="The case's id for its owner; null for everyone else (annotators judge "
        "images, not patients: use `ref`)."
    )
    ref = serializers.SerializerMethodField(
        help_text="Opaque, stable per-image reference; says nothing about the case or patient."
    )
    file_url = serializers.SerializerMethodField()
    confirmed_label = serializers.ChoiceField(
        choices=VERDICT_CHOICES,
        allow_blank=True,
        read_only=True,
        help_text="Set once enough annotators agree; empty before.",
    )
    prediction = serializers.SerializerMethodField()
    lungs = serializers.SerializerMethodField()
    modality = serializers.SerializerMethodField()
    segmentation = serializers.SerializerMethodField()
    explanations = ExplanationSerializer(many=True, read_only=True)

    class Meta:
        model = CaseImage
        fields = [
            "id",
            "ref",
            "case",
            "modality",
            "width",
            "height",
            "source_format",
            "intake_note",
            "status",
            "confirmed_label",
            "created_at",
            "file_url",
            "prediction",
            "lungs",
            "segmentation",
            "explanations",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.IntegerField(allow_null=True))
    def get_case(self, image) -> int | None:
        request = self.context.get("request")
        return case_id_for(request.user, image) if request is not None else None

    def get_ref(self, image) -> str:
        return image_ref(image)

    @extend_schema_field(serializers.ChoiceField(choices=Modality.choices))
    def get_modality(self, image) -> str:
        return image.case.modality

    @extend_schema_field(
        SegmentationSerializer(
            allow_null=True, help_text="A CT slice's segmentation; null for an X-ray."
        )
    )
    def get_segmentation(self, image) -> dict | None:
        segmentation = image.latest_segmentation
        if segmentation is None:
            return None
        return SegmentationSerializer(segmentation, context=self.context).data

    @extend_schema_field(OpenApiTypes.URI)
    def get_file_url(self, image) -> str:
        return absolute(self.context.get("request"), "image-file", image.pk)

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
            "mask_url": absolute(request, "image-lung-mask", image.pk) if has_mask else None,
            "outline_url": (
                absolute(request, "image-lung-outline", image.pk) if has_mask else None
            ),
        }


class CaseSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=Case.STATUS_CHOICES, read_only=True)
    images = ImageSerializer(many=True, read_only=True)

    class Meta:
        model = Case
        fields = [
            "id",
            "status",
            "modality",
            "patient_ref",
            "notes",
            "created_at",
            "updated_at",
            "images",
        ]
        read_only_fields = fields


class CaseCreateSerializer(serializers.Serializer):
    images = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True, use_url=False),
        allow_empty=False,
        help_text="One or more PNG, JPEG or DICOM chest radiographs or axial chest CT slices "
        "(repeat the field).",
    )
    modality = serializers.ChoiceField(
        choices=Modality.choices,
        required=False,
        default=Modality.XRAY,
        help_text="What the images are: `xray` (classified) or `ct` (segmented). A DICOM "
        "file's own Modality decides for it (CT is routed to CT; CR/DX marked `ct` is "
        "refused); PNG/JPEG CT slices must be marked `ct`. A case holds one modality.",
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
