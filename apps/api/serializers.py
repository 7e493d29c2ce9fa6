"""Representations for the REST API. Read serializers only shape data; the write
serializers validate input and the views hand it to the services."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

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
from apps.explain.models import Explanation
from apps.models.models import DatasetSnapshot, ModelVersion, Task, TrainingRun


def _absolute(request, name: str, pk: int) -> str:
    url = reverse(f"api:{name}", args=[pk])
    return request.build_absolute_uri(url) if request is not None else url


# -- auth -------------------------------------------------------------------


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        read_only=True, help_text="Send as `Authorization: Token <token>`; shown only once."
    )
    id = serializers.CharField(
        read_only=True, help_text="The token's first characters: its name in the token list."
    )
    expiry = serializers.DateTimeField(
        read_only=True, help_text="The token stops working at this time."
    )


class TokenInfoSerializer(serializers.Serializer):
    """One of your tokens, without the token itself (only its digest is stored)."""

    id = serializers.CharField(source="token_key", read_only=True)
    created = serializers.DateTimeField(read_only=True)
    expiry = serializers.DateTimeField(read_only=True, allow_null=True)
    current = serializers.SerializerMethodField(
        help_text="True for the token this request was sent with."
    )

    def get_current(self, token) -> bool:
        request = self.context.get("request")
        return request is not None and getattr(request.auth, "pk", None) == token.pk


class MeSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    roles = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="clinician, annotator, adjudicator, model_admin: what this account may do.",
    )


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
            kind: _absolute_mask(request, segmentation.image_id, kind) for kind in CT_MASK_KINDS
        }


def _absolute_mask(request, image_pk: int, kind: str) -> str:
    url = reverse("api:image-segmentation-mask", args=[image_pk, kind])
    return request.build_absolute_uri(url) if request is not None else url


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


# -- model registry -----------------------------------------------------------


class ModelVersionSerializer(serializers.ModelSerializer):
    metrics = serializers.JSONField(read_only=True)
    card = serializers.JSONField(read_only=True)
    operating_point = serializers.JSONField(
        read_only=True,
        allow_null=True,
        help_text="The row of the card's operating curve a model admin chose "
        "(`offsets` and its validation figures); null: the card's own point.",
    )
    active_offsets = serializers.DictField(
        child=serializers.FloatField(),
        read_only=True,
        allow_null=True,
        help_text="The offsets (class -> added log-probability) the version serves at: "
        "the chosen row's, else the card's; null when the card has no operating point.",
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "name",
            "task",
            "sha256",
            "status",
            "metrics",
            "card",
            "snapshot",
            "parent",
            "created_at",
            "promoted_at",
            "operating_point",
            "active_offsets",
        ]
        read_only_fields = fields


class OperatingPointRequestSerializer(serializers.Serializer):
    offsets = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        help_text="The offsets of one row of the version's operating curve "
        "(`card.operating_point.curve.rows[].offsets`), one per class.",
    )
    reset = serializers.BooleanField(
        required=False, default=False, help_text="Serve at the card's own point again."
    )
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict) -> dict:
        if attrs["reset"] == ("offsets" in attrs):
            raise serializers.ValidationError(
                "Give either `offsets` (a row of the version's operating curve) or `reset: true`."
            )
        return attrs


class RollbackRequestSerializer(serializers.Serializer):
    task = serializers.ChoiceField(
        choices=Task.choices,
        required=False,
        default=Task.CLASSIFICATION,
        help_text="Whose production version to roll back (each task has its own).",
    )


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


# -- datasets and provenance ----------------------------------------------------


class SnapshotSerializer(serializers.ModelSerializer):
    counts = serializers.JSONField(
        read_only=True,
        help_text="Per split the count of each class; `clinical`, `total`, and "
        "`by_split_class_source`: rows of {split, label, source, n}.",
    )
    changes = serializers.JSONField(
        read_only=True,
        help_text="Since the parent snapshot: `added` (rows as in counts), `removed` (with "
        "`reason`), `relabelled`, `moved` (to keep a patient in one split), "
        "`duplicates_left_out`; empty for snapshots made before they were recorded.",
    )

    class Meta:
        model = DatasetSnapshot
        fields = ["id", "parent", "created_at", "content_hash", "counts", "changes"]
        read_only_fields = fields


class _ModelRefSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    sha256 = serializers.CharField()


class _PreprocessingSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    input_size = serializers.IntegerField(allow_null=True)
    mask_outside = serializers.BooleanField()
    segmenter = serializers.CharField(allow_null=True)


class _ProvenanceImageSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    case = serializers.IntegerField()
    source_format = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    status = serializers.CharField()
    uploaded_at = serializers.DateTimeField()
    uploaded_by_role = serializers.CharField()
    file_sha256 = serializers.CharField(
        allow_null=True, help_text="SHA-256 of the stored file now (null: missing)."
    )
    file_found = serializers.BooleanField()
    original_sha256 = serializers.CharField(
        allow_null=True, help_text="DICOM uploads: SHA-256 of the stored de-identified DICOM."
    )
    recorded_sha256 = serializers.CharField(
        help_text="The hash recorded at upload (the de-identified DICOM's for a DICOM)."
    )
    matches_upload = serializers.BooleanField()


class _ProvenancePredictionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    label = serializers.CharField(allow_null=True)  # type: ignore[assignment]
    probabilities = serializers.DictField(child=serializers.FloatField())
    model_version = _ModelRefSerializer(allow_null=True)
    preprocessing = _PreprocessingSerializer(allow_null=True)
    segmenter_version = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_blank=True)


class _ProvenanceExplanationSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    method = serializers.CharField()
    status = serializers.CharField()
    params = serializers.JSONField()
    target_label = serializers.CharField(allow_null=True)
    layer = serializers.CharField(allow_null=True)
    model_version = _ModelRefSerializer(allow_null=True)
    explainer_version = serializers.CharField(allow_null=True)
    mass_in_lungs = serializers.FloatField(allow_null=True)
    requested_by_role = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class _VerdictSerializer(serializers.Serializer):
    reader = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]
    has_note = serializers.BooleanField(help_text="The reader wrote a note (its text is theirs).")
    given_at = serializers.DateTimeField()
    revised_at = serializers.DateTimeField(allow_null=True)


class _AdjudicationSerializer(serializers.Serializer):
    adjudicator = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]
    has_note = serializers.BooleanField()
    decided_at = serializers.DateTimeField()


class _LabelProvenanceSerializer(serializers.Serializer):
    confirmed_label = serializers.CharField(allow_null=True)
    usable = serializers.BooleanField()
    confirmed_at = serializers.DateTimeField(allow_null=True)
    decided_by = serializers.ChoiceField(choices=["agreement", "adjudication"], allow_null=True)
    policy = serializers.CharField()
    readers_required = serializers.IntegerField()
    verdicts = _VerdictSerializer(many=True)
    adjudication = _AdjudicationSerializer(allow_null=True)


class _LabelEventSerializer(serializers.Serializer):
    action = serializers.CharField()
    by = serializers.CharField()
    at = serializers.DateTimeField()
    label_before = serializers.CharField(allow_null=True)
    label_after = serializers.CharField(allow_null=True)
    confirmed_after = serializers.CharField(allow_null=True, allow_blank=True)


class _SnapshotMembershipSerializer(serializers.Serializer):
    snapshot = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    label = serializers.CharField()  # type: ignore[assignment]
    split = serializers.CharField()


class ProvenanceSerializer(serializers.Serializer):
    """``apps.cases.provenance.image_provenance``, documented (read-only)."""

    image = _ProvenanceImageSerializer()
    predictions = _ProvenancePredictionSerializer(many=True)
    explanations = _ProvenanceExplanationSerializer(many=True)
    label = _LabelProvenanceSerializer()  # type: ignore[assignment]
    label_history = _LabelEventSerializer(many=True)
    snapshots = _SnapshotMembershipSerializer(many=True)
