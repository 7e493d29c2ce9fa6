"""REST API v1 views: thin. Each parses input, states the roles it admits
(``allowed_roles``), narrows the queryset to what the user may see (another
clinician's case is a 404, as on the web) and calls the same service as the
web page: one create path, one label path, one promote path. A service's
refusal (``cxrplatform.errors.Refused``) becomes a 409 in the exception handler
(``apps.api.exceptions``), so no view maps one itself."""

from __future__ import annotations

import json
from typing import ClassVar, NoReturn

from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_logged_in
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from django.views.decorators.csrf import csrf_exempt
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from knox.models import AuthToken
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts import tokens
from apps.accounts.audit import record_download, record_view
from apps.accounts.roles import ANNOTATOR, CLINICIAN, MODEL_ADMIN, user_roles
from apps.api import serializers as s
from apps.api import summaries
from apps.api.permissions import ANY_AUTHENTICATED, HasAllowedRole
from apps.api.schema import errors
from apps.api.throttles import AuthTokenThrottle
from apps.cases import labelling, services
from apps.cases.access import own_cases, visible_images
from apps.cases.filters import CaseFilter
from apps.cases.freshness import case_etag
from apps.cases.models import (
    CT_MASK_KINDS,
    Case,
    CaseImage,
    ExpertLabel,
    ImageJob,
    Prediction,
    Segmentation,
)
from apps.explain import services as explain_services
from apps.explain.models import Explanation
from apps.models import services as registry
from apps.models.models import DatasetSnapshot, ModelVersion, TrainingRun
from cxrplatform.jobs import RetryRefused, retry_job
from cxrplatform.protected import protected_file_response

NPY_TYPE = "application/octet-stream"


class RoleView(APIView):
    """Base for every API view: deny by default, admit ``allowed_roles``."""

    permission_classes = [HasAllowedRole]
    allowed_roles: tuple[str, ...] | str = ()


def _located(request, name: str, pk: int) -> dict[str, str]:
    return {"Location": request.build_absolute_uri(reverse(f"api:{name}", args=[pk]))}


def _images_with_results(queryset):
    return queryset.select_related("case").prefetch_related(
        "predictions__model_version", "segmentations__model_version", "explanations"
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
    """POST: exchange a username and password for a new API token (throttled per client
    address; the account locks after repeated failures). DELETE: revoke the token the
    request is sent with (with a browser session: all of the user's tokens)."""

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
        description="Each call issues a new token (one per tool), valid until `expiry`. "
        "Only a digest is stored: keep the token, it is not shown again. After repeated "
        "failures the account is locked for a while (429, `code` `locked_out`).",
        request=s.TokenRequestSerializer,
        responses={200: s.TokenSerializer, **errors(400, 415, 429)},
        auth=[],
        tags=["auth"],
    )
    def post(self, request):
        serializer = s.TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The Django request: django-axes counts failures on it and answers a lockout.
        user = authenticate(
            request=request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            # As OAuth 2's token endpoint: wrong credentials are a 400, not a 401.
            raise ValidationError("Unable to log in with these credentials.")
        token, key = tokens.issue_token(user=user)
        # A log-in like the web one: last_login, and django-axes resets the failure count.
        user_logged_in.send(sender=type(user), request=request._request, user=user)
        return Response({"token": key, "id": token.token_key, "expiry": token.expiry})

    @extend_schema(
        operation_id="auth_token_revoke",
        summary="Revoke the API token this request is sent with",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), **errors(401)},
        tags=["auth"],
    )
    def delete(self, request):
        if isinstance(request.auth, AuthToken):
            tokens.revoke_token(token=request.auth, actor=request.user)
        else:  # a browser session: the user's every token
            tokens.revoke_all_tokens(
                user=request.user, actor=request.user, reason="revoked by its owner"
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    get=extend_schema(
        summary="Your API tokens",
        description="Every token of yours that has not expired, newest first; `current` "
        "marks the one this request is sent with. The tokens themselves are never shown.",
        responses={200: s.TokenInfoSerializer(many=True), **errors(400, 401, 404)},
        tags=["auth"],
    )
)
class TokenList(generics.ListAPIView, RoleView):
    allowed_roles = ANY_AUTHENTICATED
    serializer_class = s.TokenInfoSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuthToken.objects.none()
        return tokens.active_tokens(self.request.user)


class TokenDetail(RoleView):
    allowed_roles = ANY_AUTHENTICATED

    @extend_schema(
        summary="Revoke one of your API tokens",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), **errors(401, 404)},
        tags=["auth"],
    )
    def delete(self, request, token_id: str):
        token = tokens.active_tokens(request.user).filter(token_key=token_id).first()
        if token is None:
            raise NotFound("You have no token with this id.")
        tokens.revoke_token(token=token, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class Me(RoleView):
    """Who the request is authenticated as. Also the framework floor of ``make bench``: an
    authenticated DRF JSON response with nothing behind it but authentication."""

    allowed_roles = ANY_AUTHENTICATED

    @extend_schema(
        summary="Who you are: your user name and roles",
        responses={200: s.MeSerializer, **errors(401)},
        tags=["auth"],
    )
    def get(self, request):
        return Response(
            {"username": request.user.get_username(), "roles": sorted(user_roles(request.user))}
        )


# -- cases --------------------------------------------------------------------


@extend_schema_view(
    get=extend_schema(
        summary="Your cases (clinician)",
        responses={200: s.CaseSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["cases"],
    ),
    post=extend_schema(
        summary="Submit a case (clinician)",
        description="Multipart: one or more `images` (PNG, JPEG or DICOM), optional "
        "`modality` (`xray`, the default, or `ct`), `patient_ref` and `notes`. Each X-ray's "
        "prediction, or each CT slice's segmentation, is queued; poll the case. An X-ray "
        "marked `ct`, a CT slice marked `xray`, a multi-frame CT DICOM and an upload that "
        "mixes X-rays and CT slices are refused (400/415); nothing is stored.",
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
        # Rows only: each case's representation comes from apps.api.summaries.
        return Case.objects.filter(owner=self.request.user)

    def list(self, request, *args, **kwargs):
        queryset = self.get_queryset().only("pk", "updated_at")
        if any(name in request.query_params for name in CaseFilter.base_filters):
            queryset = self.filter_queryset(queryset)
        page = self.paginate_queryset(queryset) or []
        paginator = self.paginator
        assert paginator is not None  # noqa: S101 - the view has a pagination class
        envelope = paginator.get_paginated_response([]).data
        return summaries.json_response(
            summaries.page_body(
                {k: v for k, v in envelope.items() if k != "results"},
                summaries.case_summaries(page, request),
            )
        )

    def post(self, request):
        serializer = s.CaseCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        case = services.create_case(
            owner=request.user,
            files=data["images"],
            patient_ref=data["patient_ref"],
            notes=data["notes"],
            modality=data["modality"],
        )
        case = own_cases(request.user).get(pk=case.pk)
        body = s.CaseSerializer(case, context={"request": request}).data
        return Response(body, status=201, headers=_located(request, "case-detail", case.pk))


@extend_schema_view(
    get=extend_schema(
        summary="One of your cases (clinician)",
        responses={200: s.CaseSerializer, **errors(401, 403, 404)},
        tags=["cases"],
    ),
    delete=extend_schema(
        summary="Delete one of your cases (clinician)",
        description="204: the case is hidden at once and its rows and files are purged "
        "after `CXR_DELETED_CASE_RETENTION_DAYS` (7 by default), as from the case page; "
        "audited as `case.delete`. Labelled images of a purged case leave future "
        "snapshots. Another clinician's case is a 404.",
        responses={204: None, **errors(401, 403, 404)},
        tags=["cases"],
    ),
)
class CaseDetail(generics.RetrieveAPIView, RoleView):
    """Conditional GET: the response carries an ETag and Last-Modified (the case's
    ``updated_at``, which moves with any change of what it shows); a request with a
    matching ``If-None-Match`` (or, without one, ``If-Modified-Since``) gets 304."""

    allowed_roles = (CLINICIAN,)
    serializer_class = s.CaseSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Case.objects.none()
        return Case.objects.filter(owner=self.request.user).only("pk", "updated_at")

    def retrieve(self, request, *args, **kwargs):
        case = self.get_object()
        etag = case_etag(case, request.user.pk, summaries.origin_digest(request))
        last_modified = int(case.updated_at.timestamp())
        unchanged = get_conditional_response(request, etag=etag, last_modified=last_modified)
        if unchanged is not None:
            return unchanged
        summary = summaries.case_summaries([case], request)[0]
        response = summaries.json_response(summary)
        images = [image["id"] for image in json.loads(summary)["images"]]
        record_view(request, action="case.viewed", target=case, images=images)  # no 304s
        response["ETag"] = etag
        response["Last-Modified"] = http_date(last_modified)
        return response

    def delete(self, request, *args, **kwargs):
        from apps.cases import retention

        retention.delete_case(actor=request.user, case=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


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

    def retrieve(self, request, *args, **kwargs):
        image = self.get_object()
        body = self.get_serializer(image).data
        # The image's files are fetched (and audited) one by one: none named here.
        record_view(request, action="image.viewed", target=image)
        return Response(body)


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
        response = protected_file_response(image.file, image.content_type)
        record_download(request, kind="image", target=image)
        return response


class _ImageLungFile(FileView):
    allowed_roles = (CLINICIAN, ANNOTATOR)
    field = ""

    def get(self, request, pk: int):
        from apps.cases.lungs import lung_prediction

        image = get_object_or_404(visible_images(request.user), pk=pk)
        prediction = lung_prediction(image)
        if prediction is None:
            raise NotFound("This image has no lung mask.")
        response = protected_file_response(getattr(prediction, self.field), "image/png")
        record_download(request, kind=self.field, target=prediction)
        return response


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


# -- CT slices: segmentation figures and masks ------------------------------------


def _segmentation_of(request, pk: int) -> Segmentation:
    """The newest segmentation of one of the clinician's own CT slices (404 otherwise)."""
    image = get_object_or_404(CaseImage.objects.filter(case__owner=request.user), pk=pk)
    segmentation = image.segmentations.select_related("model_version").order_by("-pk").first()
    if segmentation is None:
        raise NotFound("This image is not a CT slice; it has no segmentation.")
    return segmentation


class ImageSegmentation(RoleView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="A CT slice's segmentation: figures and mask links (clinician, own cases)",
        description="Lung, ground-glass, consolidation and infected areas (pixels), the "
        "share of the lung affected (percent, in total and per class), the model version "
        "and the time taken; `lungs_found` false with a `message` for a slice without lung "
        "tissue. 404 for an X-ray.",
        responses={200: s.SegmentationSerializer, **errors(401, 403, 404)},
        tags=["ct"],
    )
    def get(self, request, pk: int):
        segmentation = _segmentation_of(request, pk)
        return Response(s.SegmentationSerializer(segmentation, context={"request": request}).data)


class ImageSegmentationMask(FileView):
    allowed_roles = (CLINICIAN,)

    @extend_schema(
        summary="One mask of a CT slice (PNG at the slice's size; clinician, own cases)",
        description="`lungs`, `ggo`, `consolidation`, `infection`: 8-bit PNG, 255 inside; "
        "`lung_outline`: 8-bit PNG, 255 on the lung contour. 404 until the segmentation "
        "is done.",
        parameters=[
            OpenApiParameter("kind", str, OpenApiParameter.PATH, enum=list(CT_MASK_KINDS)),
        ],
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["ct"],
    )
    def get(self, request, pk: int, kind: str):
        segmentation = _segmentation_of(request, pk)
        if kind not in CT_MASK_KINDS:
            raise NotFound(f"No mask {kind!r}; choose one of {', '.join(CT_MASK_KINDS)}.")
        field = segmentation.mask_field(kind)
        if segmentation.status != Segmentation.Status.DONE or not field:
            raise NotFound("This slice's segmentation is not done; no masks yet.")
        response = protected_file_response(field, "image/png")
        record_download(request, kind="ct_mask", target=segmentation)
        return response


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
            body, status=202, headers=_located(request, "explanation-detail", body["id"])
        )


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
        label = labelling.submit_label(
            image=image, annotator=request.user, **serializer.validated_data
        )
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


# -- retrying a failed job ------------------------------------------------------------


class JobRetry(RoleView):
    """POST: queue a failed job on one of the clinician's images again, the one retry
    service (``cxrplatform.jobs.retry_job``: only a failed job; audited as
    ``<kind>.retry``; a refusal is a 409). The one view behind every retry route: a route
    names the kind (``model``) and whether its id is the image's (``of_image``: its
    newest job of the kind, the one the image shows; the answer is the image) or the
    job's own (the answer is the job)."""

    allowed_roles = (CLINICIAN,)
    model: ClassVar[type[ImageJob]]
    of_image: ClassVar[bool] = False

    def post(self, request, pk: int):
        jobs = self.model.retryable_by(request.user)
        if self.of_image:
            image = get_object_or_404(CaseImage.objects.filter(case__owner=request.user), pk=pk)
            job = jobs.filter(image=image).order_by("-pk").first()
            if job is None:
                self.no_job()
        else:
            job = get_object_or_404(jobs, pk=pk)
        return self.answer(request, retry_job(job, actor=request.user))

    def no_job(self) -> NoReturn:
        raise NotFound(f"This image has no {self.model._meta.verbose_name}.")

    def answer(self, request, job) -> Response:
        image = _images_with_results(CaseImage.objects.filter(pk=job.image_id)).get()
        body = s.ImageSerializer(image, context={"request": request}).data
        return Response(body, status=202, headers=_located(request, "image-detail", image.pk))


@extend_schema_view(
    post=extend_schema(
        summary="Retry the failed segmentation of a CT slice (clinician, own cases)",
        description="202 with the image, its segmentation `pending` again; 409 unless the "
        "segmentation failed; 404 for an X-ray.",
        request=None,
        responses={202: s.ImageSerializer, **errors(401, 403, 404, 409)},
        tags=["ct"],
    )
)
class ImageSegmentationRetry(JobRetry):
    model, of_image = Segmentation, True

    def no_job(self) -> NoReturn:
        raise NotFound("This image is not a CT slice; it has no segmentation.")


@extend_schema_view(
    post=extend_schema(
        summary="Retry the failed classification of an image (clinician, own cases)",
        description="202 with the image, its prediction `pending` again; 409 unless the "
        "prediction failed (a failure's reason is in `prediction.error`). Poll "
        "`/api/v1/images/{id}/`.",
        request=None,
        responses={202: s.ImageSerializer, **errors(401, 403, 404, 409)},
        tags=["images"],
    )
)
class ImagePredictionRetry(JobRetry):
    model, of_image = Prediction, True

    def no_job(self) -> NoReturn:
        raise RetryRefused("This image has no prediction to retry.")


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
        return Response(body, status=202, headers=_located(request, "explanation-detail", job.pk))


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
        response = protected_file_response(explanation.overlay, "image/png")
        record_download(request, kind="overlay", target=explanation)
        return response


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
        response = protected_file_response(
            explanation.heatmap, NPY_TYPE, download_name=f"explanation-{pk}.npy"
        )
        record_download(request, kind="heatmap", target=explanation)
        return response


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
        summary="Promote a version to production of its task (model admin; audited)",
        request=s.PromoteRequestSerializer,
        responses={200: s.ModelVersionSerializer, **errors(400, 401, 403, 404, 409, 415)},
        tags=["models"],
    )
    def post(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        serializer = s.PromoteRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        reason = serializer.validated_data["reason"] or "promoted through the API"
        version = registry.promote(version=version, actor=request.user, reason=reason)
        return Response(s.ModelVersionSerializer(version).data)


class ModelVersionOperatingPoint(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    parser_classes = [JSONParser]

    @extend_schema(
        summary="Serve a version at another row of its operating curve (model admin; audited)",
        description='`{"offsets": {...}}`: one row of `card.operating_point.curve.rows`, '
        'applied after the model from the next prediction on; `{"reset": true}`: the '
        "card's own point. 400 when the offsets are not a row of the curve; 409 when the "
        "version has no operating curve.",
        request=s.OperatingPointRequestSerializer,
        responses={200: s.ModelVersionSerializer, **errors(400, 401, 403, 404, 409, 415)},
        tags=["models"],
    )
    def post(self, request, pk: int):
        version = get_object_or_404(ModelVersion, pk=pk)
        serializer = s.OperatingPointRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            version = registry.set_operating_point(
                version=version,
                actor=request.user,
                offsets=data.get("offsets"),
                reset=data["reset"],
                reason=data["reason"] or "changed through the API",
            )
        except registry.OperatingPointError as exc:  # offsets not on the curve: bad input
            raise ValidationError({"offsets": [str(exc)]}) from None
        return Response(s.ModelVersionSerializer(version).data)


class ModelRollback(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    parser_classes = [JSONParser, FormParser]

    @extend_schema(
        summary="Roll production back to the previous version (model admin; audited)",
        description="Within one task (`task`, classification by default): each task has "
        "its own production version.",
        request=s.RollbackRequestSerializer,
        responses={200: s.ModelVersionSerializer, **errors(400, 401, 403, 409, 415)},
        tags=["models"],
    )
    def post(self, request):
        serializer = s.RollbackRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version = registry.rollback(actor=request.user, task=serializer.validated_data["task"])
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
        run = registry.start_training_run(requested_by=request.user)
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


# -- datasets and provenance ------------------------------------------------------


class ImageProvenance(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="Where an image and its label come from (model admin)",
        description="The stored file's SHA-256 (and a DICOM upload's de-identified "
        "original's) against the hash recorded at upload, upload time and uploader role; "
        "each prediction with its model version and preprocessing; each explanation with "
        "method, parameters and explainer version; each reader's verdict with its note, "
        "the adjudication and the confirmed label; the label's history; the snapshots "
        "that hold the image. No patient reference, no reader's note text. Only for an "
        "image in a dataset snapshot (404 otherwise); audited (`provenance.viewed`).",
        responses={200: s.ProvenanceSerializer, **errors(401, 403, 404)},
        tags=["datasets"],
    )
    def get(self, request, pk: int):
        from apps.cases import provenance

        image = get_object_or_404(provenance.readable_images(), pk=pk)
        chain = provenance.provenance_viewed(user=request.user, image=image, request=request)
        return Response(s.ProvenanceSerializer(chain).data)


@extend_schema_view(
    get=extend_schema(
        summary="Dataset snapshots with their counts and changes (model admin)",
        responses={200: s.SnapshotSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["datasets"],
    )
)
class SnapshotList(generics.ListAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.SnapshotSerializer
    queryset = DatasetSnapshot.objects.all()


@extend_schema_view(
    get=extend_schema(
        summary="One dataset snapshot: counts by split x class x source, changes (model admin)",
        responses={200: s.SnapshotSerializer, **errors(401, 403, 404)},
        tags=["datasets"],
    )
)
class SnapshotDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.SnapshotSerializer
    queryset = DatasetSnapshot.objects.all()


class SnapshotExport(FileView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="The snapshot as a zip that `python -m ml classifier train --data` reads "
        "(model admin)",
        description="`labels.csv` (path, label, patient, source, split, sha256), `images/`, "
        "and `manifest.json` with every file's SHA-256 and each label's provenance. "
        "Audited (`dataset.export`).",
        responses={(200, "application/zip"): OpenApiTypes.BINARY, **errors(401, 403, 404, 409)},
        tags=["datasets"],
    )
    def get(self, request, pk: int):
        from apps.models.dataset_views import zip_response

        snapshot = get_object_or_404(DatasetSnapshot, pk=pk)
        return zip_response(snapshot, request.user)
