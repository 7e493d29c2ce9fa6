"""API views of the reading room: the site worklist (radiologists), a case's signed
reports (its clinician and its site's radiologists) and signing one (radiologists)."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from apps.accounts.models import record
from apps.accounts.roles import CLINICIAN, RADIOLOGIST, has_role
from apps.api.schema import errors
from apps.api.views import RoleView
from apps.reading import services
from apps.reading.api import serializers as s


class Worklist(RoleView):
    allowed_roles = (RADIOLOGIST,)

    @extend_schema(
        summary="The site worklist (radiologist; audited)",
        description="The studies of the radiologist's site, by the model's priority "
        "(probability of abnormal at the site's operating point) or newest first, with "
        "reading status and patient references (audited `reading.worklist_viewed`).",
        parameters=[
            OpenApiParameter(name, str, required=False, description=text)
            for name, text in (
                ("status", "new, in_reading or reported"),
                ("modality", "xray or ct"),
                ("date_from", "YYYY-MM-DD"),
                ("date_to", "YYYY-MM-DD"),
                ("priority", "high: flagged studies only"),
                ("order", "priority (default) or newest"),
            )
        ],
        responses={200: s.WorklistRowSerializer(many=True), **errors(401, 403)},
        tags=["reading"],
    )
    def get(self, request):
        rows = services.worklist(request.user, request.query_params)
        services.record_worklist_viewed(actor=request.user, rows=rows, via="api")
        return Response(
            [
                {
                    "case": row.case.pk,
                    "patient_ref": row.case.patient_ref,
                    "modality": row.case.modality,
                    "created_at": row.case.created_at,
                    "status": row.status,
                    "priority": row.priority.score,
                    "high_priority": row.priority.high,
                    "priority_reason": row.priority.reason,
                    "report_version": row.report.version if row.report else None,
                }
                for row in rows
            ]
        )


class CaseReports(RoleView):
    allowed_roles = (CLINICIAN, RADIOLOGIST)
    parser_classes = [JSONParser]

    @extend_schema(
        summary="A case's signed reports (its clinician, its site's radiologists)",
        responses={200: s.ReportListSerializer, **errors(401, 403, 404)},
        tags=["reading"],
    )
    def get(self, request, pk: int):
        case = get_object_or_404(services.report_cases(request.user), pk=pk)
        history = [services.report_dict(r) for r in case.reports.order_by("-version")]
        record(actor=request.user, action="report.viewed", target=case, after={"via": "api"})
        return Response(
            {"case": case.pk, "current": history[0] if history else None, "history": history}
        )

    @extend_schema(
        summary="Sign a report or an amendment (radiologist of the case's site; audited)",
        description="Signs the next version. An amendment (a version exists) needs "
        "`amendment_reason`; 409 without one. An impression that is one of the model's "
        "classes enters labelling as the radiologist's verdict.",
        request=s.SignRequestSerializer,
        responses={201: s.SignResponseSerializer, **errors(400, 401, 403, 404, 409)},
        tags=["reading"],
    )
    def post(self, request, pk: int):
        if not has_role(request.user, RADIOLOGIST):
            from rest_framework.exceptions import PermissionDenied

            raise PermissionDenied("Only radiologists sign reports.")
        case = services.study_for(request.user, pk)
        serializer = s.SignRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report, verdicts = services.sign_report(
            actor=request.user, case=case, **serializer.validated_data
        )
        body = services.report_dict(report) | {
            "verdicts_entered": verdicts.entered,
            "verdicts_skipped": verdicts.skipped,
        }
        return Response(body, status=201)
