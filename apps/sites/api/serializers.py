"""The API's representations of sites, local validation studies and site operating
points. The write serializers validate input; the views hand it to the services."""

from __future__ import annotations

from rest_framework import serializers

from apps.sites.models import Site, SiteOperatingPoint


def _targets() -> list[str]:
    from ml.models.local_validation import TARGETS

    return list(TARGETS)


class SiteSerializer(serializers.ModelSerializer):
    class Meta:
        model = Site
        fields = ["id", "name", "slug", "is_default"]
        read_only_fields = fields


class OperatingPointRefSerializer(serializers.ModelSerializer):
    """The site operating point that made a prediction's label, in brief."""

    description = serializers.CharField(
        read_only=True, help_text="Its target, e.g. 'COVID-19 sensitivity >= 0.90'."
    )

    class Meta:
        model = SiteOperatingPoint
        fields = ["id", "number", "description"]
        read_only_fields = fields


class SiteOperatingPointSerializer(serializers.ModelSerializer):
    offsets = serializers.DictField(
        child=serializers.FloatField(),
        read_only=True,
        help_text="Class -> offset added to its log-probability before the argmax.",
    )
    figures = serializers.JSONField(
        read_only=True,
        help_text="The proposal it was applied from: every figure with its interval.",
    )
    created_by = serializers.CharField(
        source="created_by.username", read_only=True, allow_null=True, default=None
    )

    class Meta:
        model = SiteOperatingPoint
        fields = [
            "id",
            "site",
            "model_version",
            "number",
            "target",
            "goal",
            "reached",
            "n_images",
            "offsets",
            "figures",
            "previous",
            "active",
            "created_by",
            "created_at",
            "rolled_back_at",
        ]
        read_only_fields = fields


class TargetRequestSerializer(serializers.Serializer):
    target = serializers.ChoiceField(
        choices=_targets(), help_text="What the point must reach on the site's labels."
    )
    goal = serializers.FloatField(
        min_value=0.0, max_value=1.0, help_text="A share in (0, 1], e.g. 0.9."
    )

    def validate_goal(self, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise serializers.ValidationError("The goal must be a share in (0, 1].")
        return value


class ApplyRequestSerializer(TargetRequestSerializer):
    offsets = serializers.DictField(
        child=serializers.FloatField(),
        required=False,
        help_text="The offsets the proposal showed: refused (409) when the labels changed "
        "since and the proposal moved. Omitted: whatever the labels propose now.",
    )


class OperatingPointsSerializer(serializers.Serializer):
    active = SiteOperatingPointSerializer(allow_null=True, help_text="null: the model's own.")
    history = SiteOperatingPointSerializer(many=True, help_text="Every point, newest first.")


class RollbackResultSerializer(serializers.Serializer):
    active = SiteOperatingPointSerializer(
        allow_null=True, help_text="The point restored; null: the model's own point."
    )


class EstimateSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True)
    high = serializers.FloatField(allow_null=True)
    n = serializers.IntegerField()
    of = serializers.CharField()
    too_wide = serializers.BooleanField()
    more_needed = serializers.IntegerField()


class LocalValidationSerializer(serializers.Serializer):
    n = serializers.IntegerField()
    classes = serializers.ListField(child=serializers.CharField())
    counts = serializers.DictField(child=serializers.IntegerField())
    figures = serializers.DictField(child=EstimateSerializer())
    recall = serializers.DictField(child=EstimateSerializer())
    reliability = serializers.ListField(child=serializers.DictField())
    offsets = serializers.DictField(child=serializers.FloatField())
    n_bootstrap = serializers.IntegerField()
    warnings = serializers.ListField(child=serializers.CharField())


class ProposalSerializer(serializers.Serializer):
    target = serializers.CharField()
    goal = serializers.FloatField()
    offsets = serializers.DictField(child=serializers.FloatField())
    reached = serializers.BooleanField()
    figure = EstimateSerializer()
    validation = LocalValidationSerializer()


class StudySerializer(serializers.Serializer):
    """The study as ``apps.sites.services.SiteValidation.to_dict`` gives it."""

    site = serializers.DictField()
    model_version = serializers.DictField()
    label_policy = serializers.DictField()
    labelled_without_prediction = serializers.IntegerField()
    validation = LocalValidationSerializer()
    at_site_point = LocalValidationSerializer(allow_null=True)
    site_point = serializers.DictField(allow_null=True)
    test_split = serializers.DictField(
        help_text="The figures stored for the version's own test split (`figures`, "
        "`recall`: value, low, high, where), and its class counts."
    )


class DriftFeatureSerializer(serializers.Serializer):
    feature = serializers.CharField()
    name = serializers.CharField()
    level = serializers.ChoiceField(choices=["none", "moderate", "drift", "too few"])
    psi = serializers.FloatField(allow_null=True, help_text="Null: too few recent values.")
    ks = serializers.FloatField(allow_null=True, help_text="Numerical features only.")
    p_value = serializers.FloatField(allow_null=True)
    n_recent = serializers.IntegerField()
    n_reference = serializers.IntegerField()
    chance_psi = serializers.FloatField(
        allow_null=True,
        help_text="About the PSI chance alone gives this many recent values: (bins - 1) / n.",
    )
    checked_at = serializers.DateTimeField()
    notified = serializers.BooleanField(help_text="Model admins were told of a drift.")


class DriftReportSerializer(serializers.Serializer):
    """A site's drift as ``apps.sites.drift.report`` gives it."""

    site = serializers.DictField()
    model_version = serializers.DictField(allow_null=True)
    reference = serializers.DictField(
        allow_null=True, help_text="{split, n}; null: no reference for this version."
    )
    window = serializers.DictField(child=serializers.IntegerField())
    thresholds = serializers.DictField(child=serializers.FloatField())
    features = DriftFeatureSerializer(many=True, help_text="The newest check of each feature.")
