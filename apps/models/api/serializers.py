"""The API's representations of the model registry: versions, training runs, dataset
snapshots and an image's provenance. Read serializers only shape data; the write
serializers validate input and the views hand it to the services."""

from __future__ import annotations

from rest_framework import serializers

from apps.models.models import DatasetSnapshot, ModelVersion, Task, TrainingRun


class ModelVersionRefSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "name", "sha256"]
        read_only_fields = fields


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
