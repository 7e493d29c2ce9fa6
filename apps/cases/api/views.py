"""API views of cases and images: submitting, reading and deleting cases, an image and
its files, CT segmentations, expert labels and the labelling queue, and retrying a
failed prediction or segmentation (``JobRetry``, which explanations share)."""

from __future__ import annotations

import json
from typing import ClassVar, NoReturn

from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.exceptions import NotFound
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from apps.accounts.audit import record_download, record_view
from apps.accounts.roles import ANNOTATOR, CLINICIAN
from apps.api.links import located
from apps.api.schema import errors
from apps.api.views import FileView, RoleView
from apps.cases import labelling, services
from apps.cases.access import image_for_ref, own_cases, visible_images
from apps.cases.api import serializers as s
from apps.cases.api import summaries
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
    current_job,
)
from apps.explain.models import Explanation
from cxrplatform.jobs import RetryRefused, retry_job
from cxrplatform.protected import protected_file_response


def images_with_results(queryset):
    return queryset.select_related("case").prefetch_related(
        "predictions__model_version", "segmentations__model_version", "explanations"
    )


def own_images(user) -> QuerySet[CaseImage]:
    """The images of a clinician's own cases: what the routes that take an image's number
    serve. Readers use the labelling routes, which take an opaque reference instead."""
    return CaseImage.objects.filter(case__owner=user)


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
        # Rows only: each case's representation comes from apps.cases.api.summaries.
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
        return Response(body, status=201, headers=located(request, "case-detail", case.pk))


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
        summary="Your cases' images (clinician)",
        description="Newest first; no patient identifiers. Readers (annotators) get images "
        "from `/api/v1/labelling/`: an opaque id, no model output before their verdict.",
        responses={200: s.ImageSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["images"],
    )
)
class ImageList(generics.ListAPIView, RoleView):
    allowed_roles = (CLINICIAN,)
    serializer_class = s.ImageSerializer

    def get_queryset(self):
        return images_with_results(own_images(self.request.user)).order_by("-pk")


@extend_schema_view(
    get=extend_schema(
        summary="One of your cases' images with its prediction and explanations (clinician)",
        responses={200: s.ImageSerializer, **errors(401, 403, 404)},
        tags=["images"],
    )
)
class ImageDetail(generics.RetrieveAPIView, RoleView):
    allowed_roles = (CLINICIAN,)
    serializer_class = s.ImageSerializer

    def get_queryset(self):
        return images_with_results(own_images(self.request.user))

    def retrieve(self, request, *args, **kwargs):
        image = self.get_object()
        body = self.get_serializer(image).data
        # The image's files are fetched (and audited) one by one: none named here.
        record_view(request, action="image.viewed", target=image)
        return Response(body)


class ImageFile(FileView):
    allowed_roles = (CLINICIAN,)

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
        image = get_object_or_404(own_images(request.user), pk=pk)
        response = protected_file_response(image.file, image.content_type)
        record_download(request, kind="image", target=image)
        return response


class _ImageLungFile(FileView):
    allowed_roles = (CLINICIAN,)
    field = ""

    def get(self, request, pk: int):
        from apps.cases.lungs import lung_prediction

        image = get_object_or_404(own_images(request.user), pk=pk)
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
    """The segmentation that speaks for one of the clinician's own CT slices
    (``current_job``, as the case page shows it; 404 otherwise)."""
    image = get_object_or_404(CaseImage.objects.filter(case__owner=request.user), pk=pk)
    segmentation = current_job(image.segmentations.select_related("model_version"))
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


# -- readers (annotators): opaque references, the model's answer as the web shows it --

# An image reference (apps.cases.access.image_ref): 24 hex digits of a keyed hash.
REF_PARAMETER = OpenApiParameter(
    "ref",
    str,
    OpenApiParameter.PATH,
    pattern="^[0-9a-f]{24}$",
    description="The image's opaque reference: the `id` of a labelling image.",
)


def reader_images(user) -> QuerySet[CaseImage]:
    """What a reader may open (``visible_images``, as the web's labelling page), with
    what a labelling image shows."""
    return visible_images(user).prefetch_related("predictions__model_version", "explanations")


def image_by_ref(user, ref: str) -> CaseImage:
    """The image the user may see whose reference is ``ref``; 404 for any other string
    (``apps.cases.access.image_for_ref``, as the web's labelling pages)."""
    image = image_for_ref(ref, reader_images(user))
    if image is None:
        raise NotFound("No image of yours to label has this reference.")
    return image


def _reader_body(request, image: CaseImage, mine: ExpertLabel | None) -> dict:
    context = {"request": request, "verdicts": {image.pk: mine}}
    return s.LabellingImageSerializer(image, context=context).data


@extend_schema_view(
    get=extend_schema(
        summary="Your labelling queue (annotator)",
        description="Images with a finished prediction and no confirmed label that you have "
        "not judged, most in need first (disputed, then least confident). Each `id` is an "
        "opaque reference; nothing groups one patient's images, and the model's answer is "
        "not shown before your verdict.",
        responses={200: s.LabellingImageSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["labels"],
    )
)
class LabellingQueue(generics.ListAPIView, RoleView):
    allowed_roles = (ANNOTATOR,)
    serializer_class = s.LabellingImageSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return CaseImage.objects.none()
        return labelling.labelling_queue(annotator=self.request.user)

    def get_serializer_context(self):
        # The queue holds only images this reader has not judged: no verdicts to look up.
        return {**super().get_serializer_context(), "verdicts": {}}


@extend_schema_view(
    get=extend_schema(
        summary="The images you gave a verdict on (annotator)",
        description="Most recently judged first, to review or change a verdict; as the "
        "queue, with `your_verdict` and, where readers are shown it, the model's answer.",
        responses={200: s.LabellingImageSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["labels"],
    )
)
class LabellingMine(generics.ListAPIView, RoleView):
    allowed_roles = (ANNOTATOR,)
    serializer_class = s.LabellingImageSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ExpertLabel.objects.none()
        user = self.request.user
        return (
            ExpertLabel.objects.filter(annotator_id=user.pk, image__in=visible_images(user))
            .prefetch_related(
                Prefetch("image", queryset=reader_images(user).order_by()),
            )
            .order_by("-updated_at", "-pk")
        )

    def list(self, request, *args, **kwargs):
        verdicts = self.paginate_queryset(self.get_queryset()) or []
        context = {
            "request": request,
            "verdicts": {verdict.image_id: verdict for verdict in verdicts},
        }
        body = s.LabellingImageSerializer(
            [verdict.image for verdict in verdicts], many=True, context=context
        ).data
        return self.get_paginated_response(body)


class LabellingImage(RoleView):
    """The image as a reader gets it: no case, no times, and the model's answer only
    where readers are shown it and after their own verdict (as on the web)."""

    allowed_roles = (ANNOTATOR,)

    @extend_schema(
        summary="One image to judge, by its reference (annotator)",
        parameters=[REF_PARAMETER],
        responses={200: s.LabellingImageSerializer, **errors(401, 403, 404)},
        tags=["labels"],
    )
    def get(self, request, ref: str):
        image = image_by_ref(request.user, ref)
        mine = ExpertLabel.objects.filter(image=image, annotator_id=request.user.pk).first()
        body = _reader_body(request, image, mine)
        record_view(request, action="image.viewed", target=image)
        return Response(body)


class LabellingImageFile(FileView):
    """The image as stored (a PNG of the uploaded pixels, or the JPEG), without the
    upload's metadata."""

    allowed_roles = (ANNOTATOR,)

    @extend_schema(
        summary="The image's bytes, by its reference (annotator)",
        parameters=[REF_PARAMETER],
        responses={
            (200, "image/png"): OpenApiTypes.BINARY,
            (200, "image/jpeg"): OpenApiTypes.BINARY,
            **errors(401, 403, 404),
        },
        tags=["labels"],
    )
    def get(self, request, ref: str):
        image = image_by_ref(request.user, ref)
        response = protected_file_response(image.file, image.content_type)
        record_download(request, kind="image", target=image)
        return response


class LabellingImageLabels(RoleView):
    allowed_roles = (ANNOTATOR,)

    @extend_schema(
        summary="Give your verdict on an image, by its reference (annotator)",
        description="201 for a new verdict, 200 when it replaces yours; the answer is the "
        "image with `your_verdict` (and, where readers are shown it, the model's answer, "
        "now that yours is recorded). The agreement policy in force decides "
        "`confirmed_label`; 409 once the image was adjudicated.",
        parameters=[REF_PARAMETER],
        request=s.LabelRequestSerializer,
        responses={
            200: s.LabellingImageSerializer,
            201: s.LabellingImageSerializer,
            **errors(400, 401, 403, 404, 409, 415),
        },
        tags=["labels"],
    )
    def post(self, request, ref: str):
        image = image_by_ref(request.user, ref)
        serializer = s.LabelRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        existed = ExpertLabel.objects.filter(image=image, annotator=request.user).exists()
        mine = labelling.submit_label(
            image=image, annotator=request.user, **serializer.validated_data
        )
        image = reader_images(request.user).get(pk=image.pk)  # its confirmation now
        return Response(_reader_body(request, image, mine), status=200 if existed else 201)


class LabellingExplanationOverlay(FileView):
    allowed_roles = (ANNOTATOR,)

    @extend_schema(
        summary="An explanation's overlay PNG, once you may see the model's answer (annotator)",
        description="404 unless readers are shown the model's answer and you gave your "
        "verdict on the image, or when the image has no finished map of this method.",
        parameters=[
            REF_PARAMETER,
            OpenApiParameter(
                "method", str, OpenApiParameter.PATH, enum=list(Explanation.Method.values)
            ),
        ],
        responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 403, 404)},
        tags=["labels"],
    )
    def get(self, request, ref: str, method: str):
        image = image_by_ref(request.user, ref)
        mine = ExpertLabel.objects.filter(image=image, annotator_id=request.user.pk).first()
        if not s.shows_model(mine):
            raise NotFound("The model's answer is not shown to you for this image.")
        explanation = next((e for e in s.shown_explanations(image) if e.method == method), None)
        if explanation is None:
            raise NotFound(f"This image has no finished {method!r} map.")
        response = protected_file_response(explanation.overlay, "image/png")
        record_download(request, kind="overlay", target=explanation)
        return response


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
            job = current_job(jobs.filter(image=image))
            if job is None:
                self.no_job()
        else:
            job = get_object_or_404(jobs, pk=pk)
        return self.answer(request, retry_job(job, actor=request.user))

    def no_job(self) -> NoReturn:
        raise NotFound(f"This image has no {self.model._meta.verbose_name}.")

    def answer(self, request, job) -> Response:
        image = images_with_results(CaseImage.objects.filter(pk=job.image_id)).get()
        body = s.ImageSerializer(image, context={"request": request}).data
        return Response(body, status=202, headers=located(request, "image-detail", image.pk))


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
