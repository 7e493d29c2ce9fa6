"""The audit log page (model admins): filters by category, actor, action and date, CSV
export.

Read-only, like the Django admin's view of the same rows; an export is itself audited
("audit.export", with its filters and row count). The categories answer the two
questions an auditor starts with: who saw patient data (page views, downloads,
exports), and who changed the platform (models, training, users, retention); sign-ins
and the clinical work on cases and labels are the other two.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from typing import cast

import django_filters
from django import forms
from django.core.paginator import Paginator
from django.db.models import Model, Q, QuerySet
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from apps.accounts.models import AuditEvent, record
from apps.accounts.roles import MODEL_ADMIN, role_required

SYSTEM = "system"
CSV_COLUMNS = ["at", "actor", "action", "target_type", "target_id", "before", "after"]
# A cell starting with one of these is a formula to a spreadsheet (CSV injection): failed
# log-ins record whatever was typed as the username.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

# Each action in one category: a name ending in "." is a group of actions, else one.
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "patient_data": (
        "Patient-data access",
        (
            "case.viewed",
            "image.viewed",
            "download.",
            "inspector.image_viewed",
            "provenance.viewed",
            "dataset.export",
            "retention.lookup",
            "reading.worklist_viewed",
            "report.viewed",
            "report.exported",
        ),
    ),
    "admin": (
        "Administrative actions",
        (
            "model.",
            "training.",
            "inspection.",
            "generator.",
            "user.",
            "labels.policy",
            "retention.erasure",
            "case.purge",
            "audit.",
        ),
    ),
    "clinical": (
        "Clinical work",
        (
            "case.create",
            "case.images_added",
            "case.delete",
            "label.",
            "explanation.",
            "prediction.",
            "segmentation.",
            "reading.started",
            "report.signed",
            "report.amended",
            # Studies received from and results returned to the PACS (apps.pacs).
            "pacs.",
        ),
    ),
    "accounts": ("Sign-ins and tokens", ("auth.", "token.")),
}


def category_q(category: str) -> Q:
    """The events of one of :data:`CATEGORIES`."""
    query = Q(pk__in=[])
    for action in CATEGORIES[category][1]:
        query |= Q(action__startswith=action) if action.endswith(".") else Q(action=action)
    return query


class AuditFilter(django_filters.FilterSet):
    category = django_filters.ChoiceFilter(
        method="filter_category",
        label="Category",
        choices=[(key, label) for key, (label, _actions) in CATEGORIES.items()],
        empty_label="All events",
        help_text="patient-data access: page views, downloads and exports of patient data",
    )
    actor = django_filters.CharFilter(
        method="filter_actor",
        label="Actor",
        help_text=f"a username, or “{SYSTEM}” for the platform's own actions",
    )
    action = django_filters.CharFilter(
        method="filter_action",
        label="Action",
        help_text="an action (download.image) or a group of them (download)",
        widget=forms.TextInput(attrs={"list": "audit-actions"}),
    )
    since = django_filters.DateFilter(
        field_name="at__date",
        lookup_expr="gte",
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    until = django_filters.DateFilter(
        field_name="at__date",
        lookup_expr="lte",
        label="Until",
        widget=forms.DateInput(attrs={"type": "date"}),
    )

    class Meta:
        model = AuditEvent
        fields = ["category", "actor", "action", "since", "until"]

    def filter_category(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        return queryset.filter(category_q(value))

    def filter_actor(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        if value.lower() == SYSTEM:
            return queryset.filter(actor__isnull=True)
        return queryset.filter(actor__username=value)

    def filter_action(self, queryset: QuerySet, name: str, value: str) -> QuerySet:
        value = value.strip()
        group = value.rstrip(".")
        return queryset.filter(Q(action=value) | Q(action__startswith=f"{group}."))


def _cell(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f"'{text}" if text.startswith(FORMULA_START) else text


def _csv_rows(events: QuerySet) -> Iterator[list[str]]:
    yield CSV_COLUMNS
    for event in events.iterator(chunk_size=2000):
        yield [
            event.at.isoformat(),
            _cell(event.actor.username if event.actor else ""),
            _cell(event.action),
            _cell(event.target_type),
            _cell(event.target_id),
            _cell(event.before),
            _cell(event.after),
        ]


class _Echo:
    def write(self, value: str) -> str:
        return value


def _export(request: HttpRequest, events: QuerySet, filters: dict[str, str]) -> HttpResponse:
    record(
        actor=request.user,
        action="audit.export",
        target=cast(Model, request.user),  # role_required: a logged-in user
        after={"filters": filters, "rows": events.count()},
    )
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse(
        (writer.writerow(row) for row in _csv_rows(events)), content_type="text/csv"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.csv"'
    response["Cache-Control"] = "private, no-store"
    return response  # type: ignore[return-value]


@require_GET
@role_required(MODEL_ADMIN)
def audit_log(request: HttpRequest) -> HttpResponse:
    params = request.GET.copy()
    wants_csv = params.pop("format", [""])[-1] == "csv"
    params.pop("page", None)
    base = AuditEvent.objects.select_related("actor").order_by("-at", "-pk")
    filtered = AuditFilter(params, queryset=base)
    valid = filtered.is_valid()
    filters = {k: str(v) for k, v in params.items() if v and k in AuditFilter.base_filters}
    if wants_csv and valid:
        return _export(request, filtered.qs, filters)
    events = filtered.qs if valid else base.none()
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "accounts/audit_log.html",
        {
            "filter": filtered,
            "page": page,
            "query": params.urlencode(),
            "filtering": bool(filters),
            "actions": AuditEvent.objects.order_by("action")
            .values_list("action", flat=True)
            .distinct(),
        },
        status=200 if valid else 400,
    )
