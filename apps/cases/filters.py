"""Case-list filters, one definition for the web list and the REST API."""

from __future__ import annotations

import django_filters
from django import forms

from apps.cases.models import LABEL_CHOICES, VERDICT_CHOICES, Case


class CaseFilter(django_filters.FilterSet):
    status = django_filters.ChoiceFilter(
        choices=Case.STATUS_CHOICES,
        method="filter_status",
        label="Status",
        empty_label="Any status",
    )
    label = django_filters.ChoiceFilter(
        choices=LABEL_CHOICES,
        method="filter_label",
        label="Predicted label",
        empty_label="Any prediction",
    )
    expert_label = django_filters.ChoiceFilter(
        choices=VERDICT_CHOICES,
        field_name="images__confirmed_label",
        distinct=True,
        label="Expert label",
        empty_label="Any expert label",
    )
    created_after = django_filters.DateFilter(
        field_name="created_at__date",
        lookup_expr="gte",
        label="Created from",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    created_before = django_filters.DateFilter(
        field_name="created_at__date",
        lookup_expr="lte",
        label="Created until",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    class Meta:
        model = Case
        fields = ["status", "label", "expert_label", "created_after", "created_before"]

    def filter_status(self, queryset, name, value):
        # The status is derived from the jobs (Case.status); the annotation that computes
        # it in SQL is built only when asked for (building it costs ~10 ms per request).
        return queryset.with_status().filter(derived_status=value)

    def filter_label(self, queryset, name, value):
        # Any image of the case whose finished prediction carries the label.
        return queryset.filter(
            images__predictions__status="done", images__predictions__label=value
        ).distinct()


def filter_cases(queryset, params) -> CaseFilter:
    """Bind the filter to ``queryset``; callers check ``is_valid()``."""
    return CaseFilter(params, queryset=queryset)
