"""What the reading room's API answers and accepts."""

from __future__ import annotations

from rest_framework import serializers

from apps.reading.models import Impression, ReadingStatus, Urgency


class ReportSerializer(serializers.Serializer):
    case = serializers.IntegerField()
    version = serializers.IntegerField()
    impression = serializers.ChoiceField(choices=Impression.choices)
    impression_display = serializers.CharField()
    text = serializers.CharField(allow_blank=True)
    urgency = serializers.ChoiceField(choices=Urgency.choices)
    amendment_reason = serializers.CharField(allow_blank=True)
    author = serializers.CharField()
    signed_at = serializers.DateTimeField()


class ReportListSerializer(serializers.Serializer):
    case = serializers.IntegerField()
    current = ReportSerializer(allow_null=True)
    history = ReportSerializer(many=True, help_text="Every signed version, newest first.")


class SignRequestSerializer(serializers.Serializer):
    impression = serializers.ChoiceField(choices=Impression.choices)
    text = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")
    urgency = serializers.ChoiceField(choices=Urgency.choices, default=Urgency.ROUTINE)
    amendment_reason = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=1000,
        default="",
        help_text="Needed once a version is signed (an amendment).",
    )


class SignResponseSerializer(ReportSerializer):
    verdicts_entered = serializers.IntegerField(
        help_text="Images whose labelling got this impression as the radiologist's verdict."
    )
    verdicts_skipped = serializers.ListField(child=serializers.CharField())


class WorklistRowSerializer(serializers.Serializer):
    case = serializers.IntegerField()
    patient_ref = serializers.CharField()
    modality = serializers.CharField()
    created_at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=ReadingStatus.choices)
    priority = serializers.FloatField(allow_null=True, help_text="0-1; null: no result yet.")
    high_priority = serializers.BooleanField()
    priority_reason = serializers.CharField()
    report_version = serializers.IntegerField(allow_null=True)
