"""API views of explanations: asking for one, polling it, its overlay and heatmap, and
retrying a failed one."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.response import Response

from apps.accounts.audit import record_download
from apps.accounts.roles import CLINICIAN
from apps.api.links import located
from apps.api.schema import errors
from apps.api.views import FileView, RoleView
from apps.cases.api.views import JobRetry, own_images
from apps.cases.models import CaseImage
from apps.explain import services as explain_services
from apps.explain.api import serializers as s
from apps.explain.models import Explanation
from cxrplatform.protected import protected_file_response

NPY_TYPE = "application/octet-stream"


class ImageExplanations(RoleView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="Ask for an explanation of an image (clinician, own cases)",
        description="202 with the queued job; 200 when that explanation is already done "
        "(asking twice returns the same job). Poll `/api/v1/explanations/{id}/`.",
        request=s.ExplanationRequestSerializer,
        responses={
            200: s.ExplanationSerializer,
            202: s.ExplanationSerializer,
            **errors(400, 401, 403, 404, 409, 415),
        },
        tags=["explanations"],
    )
    def post(self, request, pk: int):
        image = get_object_or_404(CaseImage.objects.filter(case__owner=request.user), pk=pk)
        serializer = s.ExplanationRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        explanation = explain_services.request_explanation(
            image=image, method=serializer.validated_data["method"], requested_by=request.user
        )
        body = s.ExplanationSerializer(explanation, context={"request": request}).data
        if explanation.status == Explanation.Status.DONE:
            return Response(body, status=200)
        return Response(
            body, status=202, headers=located(request, "explanation-detail", body["id"])
        )


@extend_schema_view(
    post=extend_schema(
        summary="Retry a failed explanation (clinician, own cases)",
        description="202 with the explanation, `pending` again (the same job: its id and "
        "method stay); 409 unless it failed, or when the same map was asked for again since "
        "(that one is live). Audited as `explanation.retry`. Poll "
        "`/api/v1/explanations/{id}/`.",
        request=None,
        responses={202: s.ExplanationSerializer, **errors(401, 403, 404, 409)},
        tags=["explanations"],
    )
)
class ExplanationRetry(JobRetry):
    model = Explanation

    def answer(self, request, job) -> Response:
        body = s.ExplanationSerializer(job, context={"request": request}).data
        return Response(body, status=202, headers=located(request, "explanation-detail", job.pk))


# -- explanations ---------------------------------------------------------------


def _visible_explanations(user):
    """A clinician's own cases' explanations (readers get theirs, when the model's answer
    is shown to them, from the labelling routes)."""
    return Explanation.objects.filter(image__in=own_images(user))


@extend_schema_view(
    get=extend_schema(
        summary="One explanation job (clinician, own cases)",
        responses={200: s.ExplanationSerializer, **errors(401, 403, 404)},
        tags=["explanations"],
    )
)
class ExplanationDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (CLINICIAN,)
    serializer_class = s.ExplanationSerializer

    def get_queryset(self):
        return _visible_explanations(self.request.user)


class ExplanationOverlay(FileView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="The explanation's overlay PNG (clinician, own cases)",
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["explanations"],
    )
    def get(self, request, pk: int):
        explanation = get_object_or_404(
            _visible_explanations(request.user), pk=pk, status=Explanation.Status.DONE
        )
        response = protected_file_response(explanation.overlay, "image/png")
        record_download(request, kind="overlay", target=explanation)
        return response


class ExplanationHeatmap(FileView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="The raw heatmap (float32 NumPy .npy, values in [0, 1]; clinician, own cases)",
        responses={(200, NPY_TYPE): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["explanations"],
    )
    def get(self, request, pk: int):
        explanation = get_object_or_404(
            _visible_explanations(request.user), pk=pk, status=Explanation.Status.DONE
        )
        response = protected_file_response(
            explanation.heatmap, NPY_TYPE, download_name=f"explanation-{pk}.npy"
        )
        record_download(request, kind="heatmap", target=explanation)
        return response
