"""The API's representations of cases, images, their predictions and CT segmentations,
and expert labels. Read serializers only shape data; the write serializers validate
input and the views hand it to the services."""

from __future__ import annotations

from django.conf import settings
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
    Prediction,
    Segmentation,
)
from apps.explain.api.serializers import ExplanationSerializer
from apps.explain.models import Explanation
from apps.models.api.serializers import ModelVersionRefSerializer
from apps.sites.api.serializers import OperatingPointRefSerializer

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
    operating_point = serializers.SerializerMethodField()

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

    @extend_schema_field(
        OperatingPointRefSerializer(
            allow_null=True,
            help_text="The case's site operating point that made the label; null: the "
            "model's own point (or not done yet).",
        )
    )
    def get_operating_point(self, prediction) -> dict | None:
        if prediction.operating_point_id is None:
            return None
        return OperatingPointRefSerializer(prediction.operating_point).data


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
        help_text="The case's id for its owner; null for everyone else."
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


# -- what annotators (readers) get ------------------------------------------------------


def shows_model(mine: ExpertLabel | None) -> bool:
    """Whether a reader sees the model's answer, as on the web's labelling page: only
    with ``CXR_LABEL_SHOW_MODEL``, and only once they gave their own verdict (so the
    statistics see their unanchored read)."""
    return settings.CXR_LABEL_SHOW_MODEL and mine is not None


class YourVerdictSerializer(serializers.Serializer):
    # A field named "label" shadows Field.label (a str) in the DRF stubs.
    label = serializers.ChoiceField(choices=VERDICT_CHOICES)  # type: ignore[assignment]
    note = serializers.CharField(allow_blank=True)


class LabellingPredictionSerializer(serializers.Serializer):
    """The model's answer as the labelling page shows it to a reader who gave theirs."""

    label = serializers.ChoiceField(choices=LABEL_CHOICES)  # type: ignore[assignment]
    probabilities = ProbabilitiesSerializer()
    model_version = ModelVersionRefSerializer(allow_null=True)


class LabellingExplanationSerializer(serializers.Serializer):
    method = serializers.ChoiceField(choices=Explanation.Method.choices)
    target_label = serializers.CharField(
        allow_blank=True, help_text="The class the map explains: the model's label."
    )
    overlay_url = serializers.URLField(help_text="Overlay PNG with a colour scale.")


class LabellingImageSerializer(serializers.Serializer):
    """An image as a reader (annotator) gets it: to judge, not to trace to a patient.

    Its ``id`` is an opaque per-image reference: no case, no upload time, no intake note,
    nothing that would group one patient's images. The model's answer (``prediction``,
    ``explanations``) is there only when the deployment shows it to readers
    (``CXR_LABEL_SHOW_MODEL``) and only after this reader's own verdict, as on the web.
    """

    id = serializers.SerializerMethodField(
        help_text="Opaque, stable per-image reference (the labelling routes take it); says "
        "nothing about the case or patient."
    )
    width = serializers.IntegerField(read_only=True)
    height = serializers.IntegerField(read_only=True)
    file_url = serializers.SerializerMethodField()
    confirmed_label = serializers.ChoiceField(
        choices=VERDICT_CHOICES,
        allow_blank=True,
        read_only=True,
        help_text="Set once enough readers agree (or an adjudicator decided); empty before.",
    )
    your_verdict = serializers.SerializerMethodField()
    prediction = serializers.SerializerMethodField()
    explanations = serializers.SerializerMethodField()

    def _mine(self, image) -> ExpertLabel | None:
        """This reader's verdict: from the view's ``verdicts`` (image pk -> label, for
        the images it serialises) when it gave them, else looked up."""
        verdicts = self.context.get("verdicts")
        if verdicts is not None:
            return verdicts.get(image.pk)
        request = self.context["request"]
        return ExpertLabel.objects.filter(image=image, annotator_id=request.user.pk).first()

    def get_id(self, image) -> str:
        return image_ref(image)

    @extend_schema_field(OpenApiTypes.URI)
    def get_file_url(self, image) -> str:
        return absolute(self.context.get("request"), "labelling-image-file", image_ref(image))

    @extend_schema_field(
        YourVerdictSerializer(allow_null=True, help_text="Null until you give one.")
    )
    def get_your_verdict(self, image) -> dict | None:
        mine = self._mine(image)
        return {"label": mine.label, "note": mine.note} if mine is not None else None

    @extend_schema_field(
        LabellingPredictionSerializer(
            allow_null=True,
            help_text="Null unless readers are shown the model's answer and you gave your verdict.",
        )
    )
    def get_prediction(self, image) -> dict | None:
        prediction = image.latest_prediction
        if not shows_model(self._mine(image)) or prediction is None:
            return None
        if prediction.status != Prediction.Status.DONE:
            return None
        return LabellingPredictionSerializer(prediction).data

    @extend_schema_field(
        LabellingExplanationSerializer(
            many=True, help_text="Empty unless the prediction is shown; finished maps only."
        )
    )
    def get_explanations(self, image) -> list[dict]:
        if not shows_model(self._mine(image)):
            return []
        request = self.context.get("request")
        ref = image_ref(image)
        return [
            {
                "method": explanation.method,
                "target_label": explanation.target_label,
                "overlay_url": absolute(
                    request, "labelling-explanation-overlay", ref, explanation.method
                ),
            }
            for explanation in shown_explanations(image)
        ]


def shown_explanations(image) -> list[Explanation]:
    """The image's current explanations that a reader shown the model's answer sees."""
    return [
        explanation
        for explanation in image.current_explanations
        if explanation.status == Explanation.Status.DONE and explanation.overlay
    ]
