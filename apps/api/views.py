"""REST API v1 views: thin. Each parses input, states the roles it admits
(``allowed_roles``), narrows the queryset to what the user may see (another
clinician's case is a 404, as on the web) and calls the same service as the
web page: one create path, one label path, one promote path."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.roles import ANNOTATOR, CLINICIAN, MODEL_ADMIN
from apps.api import serializers as s
from apps.api.exceptions import Conflict
from apps.api.permissions import ANY_AUTHENTICATED, HasAllowedRole
from apps.api.schema import errors
from apps.api.throttles import AuthTokenThrottle
from apps.cases import labelling, services
from apps.cases.access import own_cases, visible_images
from apps.cases.filters import CaseFilter
from apps.cases.models import Case, CaseImage, ExpertLabel
from apps.explain import services as explain_services
from apps.explain.models import Explanation
from apps.models import services as registry
from apps.models.models import ModelVersion, TrainingRun
from cxrplatform.protected import protected_file_response

IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "dicom": "image/png"}  # DICOM: its PNG
NPY_TYPE = "application/octet-stream"


class RoleView(APIView):
    """Base for every API view: deny by default, admit ``allowed_roles``."""

    permission_classes = [HasAllowedRole]
    allowed_roles: tuple[str, ...] | str = ()


def _located(request, name: str, pk: int) -> dict[str, str]:
    return {"Location": request.build_absolute_uri(reverse(f"api:{name}", args=[pk]))}


def _images_with_results(queryset):
    return queryset.select_related("case").prefetch_related(
        "predictions__model_version", "explanations"
    )


class FileView(RoleView):
    """Binary downloads: never refused for the client's Accept header (errors are JSON)."""

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)


@csrf_exempt  # it changes nothing, and must answer 404 (not a CSRF 403) to any method
def not_found(request, *args, **kwargs) -> JsonResponse:
    """The API's 404 for a URL no endpoint matches, in the API's error body."""
    message = f"No API endpoint at {request.path}."
    body = {"error": {"status": 404, "code": "not_found", "message": message, "fields": {}}}
    return JsonResponse(body, status=404)


# -- auth ---------------------------------------------------------------------


class TokenView(RoleView):
    """POST: exchange a username and password for the user's API token (throttled per
    client address). DELETE: revoke the token; the next POST issues a new one."""

    allowed_roles = ANY_AUTHENTICATED
    parser_classes = [JSONParser, FormParser]

    def get_authenticators(self):
        # Obtaining a token takes credentials in the body, never a token or a session.
        if self.request is not None and self.request.method == "POST":
            return []
        return super().get_authenticators()

    def get_permissions(self):
        if self.request is not None and self.request.method == "POST":
            return [AllowAny()]
        return super().get_permissions()

    def get_throttles(self):
        if self.request is not None and self.request.method == "POST":
            return [AuthTokenThrottle()]
        return []

    @extend_schema(
        operation_id="auth_token_obtain",
        summary="Obtain an API token",
        request=s.TokenRequestSerializer,
        responses={200: s.TokenSerializer, **errors(400, 415, 429)},
        auth=[],
        tags=["auth"],
    )
    def post(self, request):
        serializer = s.TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(
            request=request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            # As OAuth 2's token endpoint: wrong credentials are a 400, not a 401.
            raise ValidationError("Unable to log in with these credentials.")
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

    @extend_schema(
        operation_id="auth_token_revoke",
        summary="Revoke your API token",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), **errors(401)},
        tags=["auth"],
    )
    def delete(self, request):
        Token.objects.filter(user=request.user).delete()
        return Response(status=status.HTTP_204_NO_CONTENT)


# -- cases --------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="Your cases (clinician)",
        responses={200: s.CaseSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["cases"],
    ),
    post=extend_schema(
        summary="Submit a case (clinician)",
        description="Multipart: one or more `images` (PNG, JPEG or DICOM), optional `patient_ref` "
        "and `notes`. Each image's prediction is queued; poll the case.",
        request={"multipart/form-data": s.CaseCreateSerializer},
        responses={201: s.CaseSerializer, **errors(400, 401, 403, 413, 415)},
        tags=["cases"],
    ),
)
class CaseListCreate(generics.ListAPIView, RoleView):
    allowed_roles = (CLINICIAN,)
    serializer_class = s.CaseSerializer
    parser_classes = [MultiPartParser]
    filter_backends = [DjangoFilterBackend]
    filterset_class = CaseFilter  # the web list's filters: status, label, expert_label, dates

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation
            return Case.objects.none()
        return own_cases(self.request.user).with_status()

    def post(self, request):
        serializer = s.CaseCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        case = services.create_case(
            owner=request.user,
            files=data["images"],
            patient_ref=data["patient_ref"],
            notes=data["notes"],
        )
        case = own_cases(request.user).get(pk=case.pk)
        body = s.CaseSerializer(case, context={"request": request}).data
        return Response(body, status=201, headers=_located(request, "case-detail", case.pk))


@extend_schema_view(
    get=extend_schema(
        summary="One of your cases (clinician)",
        responses={200: s.CaseSerializer, **errors(401, 403, 404)},
        tags=["cases"],
    )
)
class CaseDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (CLINICIAN,)
    serializer_class = s.CaseSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Case.objects.none()
        return own_cases(self.request.user)


# -- images -------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="Images you may see",
        description="Clinicians: their own cases' images. Annotators: every image with a "
        "finished prediction. No patient identifiers.",
        responses={200: s.ImageSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["images"],
    )
)
class ImageList(generics.ListAPIView, RoleView):
    allowed_roles = (CLINICIAN, ANNOTATOR)
    serializer_class = s.ImageSerializer

    def get_queryset(self):
        return _images_with_results(visible_images(self.request.user)).order_by("-pk")


@extend_schema_view(
    get=extend_schema(
        summary="One image with its prediction and explanations",
        responses={200: s.ImageSerializer, **errors(401, 403, 404)},
        tags=["images"],
    )
)
class ImageDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (CLINICIAN, ANNOTATOR)
    serializer_class = s.ImageSerializer

    def get_queryset(self):
        return _images_with_results(visible_images(self.request.user))


class ImageFile(FileView):
    allowed_roles = (CLINICIAN, ANNOTATOR)

    @extend_schema(
        summary="The uploaded image's bytes",
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            (200, "image/jpeg"): OpenApiTypes.BINARY,
            **errors(401, 403, 404),
        },
        tags=["images"],
    )
    def get(self, request, pk: int):
        image = get_object_or_404(visible_images(request.user), pk=pk)
        return protected_file_response(image.file, IMAGE_TYPES[image.source_format])


class _ImageLungFile(FileView):
    allowed_roles = (CLINICIAN, ANNOTATOR)
    field = ""

    def get(self, request, pk: int):
        from apps.cases.lungs import lung_prediction

        image = get_object_or_404(visible_images(request.user), pk=pk)
        prediction = lung_prediction(image)
        if prediction is None:
            raise NotFound("This image has no lung mask.")
        return protected_file_response(getattr(prediction, self.field), "image/png")


@extend_schema_view(
    get=extend_schema(
        summary="The image's lung mask (8-bit PNG, 255 = lung)",
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["images"],
    )
)
class ImageLungMask(_ImageLungFile):
    field = "lung_mask"


@extend_schema_view(
    get=extend_schema(
        summary="The image's lung outline (transparent PNG, to lay over the image)",
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["images"],
    )
)
class ImageLungOutline(_ImageLungFile):
    field = "lung_outline"


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
        try:
            explanation = explain_services.request_explanation(
                image=image, method=serializer.validated_data["method"], requested_by=request.user
            )
        except explain_services.ExplanationUnavailable as exc:
            raise Conflict(str(exc)) from None
        body = s.ExplanationSerializer(explanation, context={"request": request}).data
        if explanation.status == Explanation.Status.DONE:
            return Response(body, status=200)
        return Response(
            body, status=202, headers=_located(request, "explanation-detail", body["id"])
        )


class ImagePredictionRetry(RoleView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="Retry the failed classification of an image (clinician, own cases)",
        description="202 with the image, its prediction `pending` again; 409 unless the "
        "prediction failed (a failure's reason is in `prediction.error`). Poll "
        "`/api/v1/images/{id}/`.",
        request=None,
        responses={202: s.ImageSerializer, **errors(401, 403, 404, 409)},
        tags=["images"],
    )
    def post(self, request, pk: int):
        image = get_object_or_404(CaseImage.objects.filter(case__owner=request.user), pk=pk)
        prediction = image.latest_prediction
        if prediction is None:
            raise Conflict("This image has no prediction to retry.")
        try:
            services.retry_prediction(prediction=prediction, actor=request.user)
        except services.RetryRefused as exc:
            raise Conflict(str(exc)) from None
        image = _images_with_results(CaseImage.objects.filter(pk=image.pk)).get()
        body = s.ImageSerializer(image, context={"request": request}).data
        return Response(body, status=202, headers=_located(request, "image-detail", image.pk))


class ImageLabels(RoleView):
    allowed_roles = (ANNOTATOR,)

    @extend_schema(
        summary="Give your verdict on an image (annotator)",
        description="201 for a new verdict, 200 when it replaces yours. The image is "
        "confirmed once enough annotators agree.",
        request=s.LabelRequestSerializer,
        responses={
            200: s.ExpertLabelSerializer,
            201: s.ExpertLabelSerializer,
            **errors(400, 401, 403, 404, 409, 415),
        },
        tags=["labels"],
    )
    def post(self, request, pk: int):
        image = get_object_or_404(visible_images(request.user), pk=pk)
        serializer = s.LabelRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        existed = ExpertLabel.objects.filter(image=image, annotator=request.user).exists()
        try:
            label = labelling.submit_label(
                image=image, annotator=request.user, **serializer.validated_data
            )
        except labelling.LabelRejected as exc:
            raise Conflict(str(exc)) from None
        body = s.ExpertLabelSerializer(label).data
        return Response(body, status=200 if existed else 201)


@extend_schema_view(
    get=extend_schema(
        summary="Your labelling queue (annotator)",
        description="Images with a finished prediction and no confirmed label that you have "
        "not judged, most in need first (disputed, then least confident).",
        responses={200: s.ImageSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["labels"],
    )
)
class LabellingQueue(generics.ListAPIView, RoleView):
    allowed_roles = (ANNOTATOR,)
    serializer_class = s.ImageSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CaseImage.objects.none()
        return labelling.labelling_queue(annotator=self.request.user)


# -- explanations ---------------------------------------------------------------


def _visible_explanations(user):
    return Explanation.objects.filter(image__in=visible_images(user))


@extend_schema_view(
    get=extend_schema(
        summary="One explanation job",
        responses={200: s.ExplanationSerializer, **errors(401, 403, 404)},
        tags=["explanations"],
    )
)
class ExplanationDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (CLINICIAN, ANNOTATOR)
    serializer_class = s.ExplanationSerializer

    def get_queryset(self):
        return _visible_explanations(self.request.user)


class ExplanationOverlay(FileView):
    allowed_roles = (CLINICIAN, ANNOTATOR)

    @extend_schema(
        summary="The explanation's overlay PNG",
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["explanations"],
    )
    def get(self, request, pk: int):
        explanation = get_object_or_404(
            _visible_explanations(request.user), pk=pk, status=Explanation.Status.DONE
        )
        return protected_file_response(explanation.overlay, "image/png")


class ExplanationHeatmap(FileView):
    allowed_roles = (CLINICIAN, ANNOTATOR)

    @extend_schema(
        summary="The raw heatmap (float32 NumPy .npy, values in [0, 1])",
        responses={(200, NPY_TYPE): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["explanations"],
    )
    def get(self, request, pk: int):
        explanation = get_object_or_404(
            _visible_explanations(request.user), pk=pk, status=Explanation.Status.DONE
        )
        return protected_file_response(
            explanation.heatmap, NPY_TYPE, download_name=f"explanation-{pk}.npy"
        )


# -- model registry -------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="Model versions (model admin)",
        responses={200: s.ModelVersionSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["models"],
    )
)
class ModelVersionList(generics.ListAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.ModelVersionSerializer
    queryset = ModelVersion.objects.all()


@extend_schema_view(
    get=extend_schema(
        summary="One model version with its metrics and card (model admin)",
        responses={200: s.ModelVersionSerializer, **errors(401, 403, 404)},
        tags=["models"],
    )
)
class ModelVersionDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.ModelVersionSerializer
    queryset = ModelVersion.objects.all()


class ModelVersionPromote(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="Promote a version to production (model admin; audited)",
        request=s.PromoteRequestSerializer,
        responses={200: s.ModelVersionSerializer, **errors(400, 401, 403, 404, 409, 415)},
        tags=["models"],
    )
    def post(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        serializer = s.PromoteRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        reason = serializer.validated_data["reason"] or "promoted through the API"
        try:
            version = registry.promote(version=version, actor=request.user, reason=reason)
        except registry.RegistryError as exc:
            raise Conflict(str(exc)) from None
        return Response(s.ModelVersionSerializer(version).data)


class ModelRollback(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="Roll production back to the previous version (model admin; audited)",
        request=None,
        responses={200: s.ModelVersionSerializer, **errors(401, 403, 409)},
        tags=["models"],
    )
    def post(self, request):
        try:
            version = registry.rollback(actor=request.user)
        except registry.RegistryError as exc:
            raise Conflict(str(exc)) from None
        return Response(s.ModelVersionSerializer(version).data)


@extend_schema_view(
    get=extend_schema(
        summary="Training runs with their progress (model admin)",
        responses={200: s.TrainingRunSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["training"],
    ),
    post=extend_schema(
        summary="Snapshot the data and queue a training run (model admin)",
        description="202 with the queued run; poll `/api/v1/training-runs/{id}/`. "
        "409 while another run is pending or running, or when there is no data.",
        request=None,
        responses={202: s.TrainingRunSerializer, **errors(401, 403, 409)},
        tags=["training"],
    ),
)
class TrainingRunListCreate(generics.ListAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.TrainingRunSerializer
    queryset = TrainingRun.objects.all()

    def post(self, request):
        try:
            run = registry.start_training_run(requested_by=request.user)
        except (registry.RegistryError, ValueError) as exc:
            raise Conflict(str(exc)) from None
        body = s.TrainingRunSerializer(run).data
        return Response(body, status=202, headers=_located(request, "training-run-detail", run.pk))


@extend_schema_view(
    get=extend_schema(
        summary="One training run and its progress (model admin)",
        responses={200: s.TrainingRunSerializer, **errors(401, 403, 404)},
        tags=["training"],
    )
)
class TrainingRunDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.TrainingRunSerializer
    queryset = TrainingRun.objects.all()
