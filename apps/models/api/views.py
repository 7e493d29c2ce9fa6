"""API views of the model registry: versions (promotion, rollback, operating point),
training runs, dataset snapshots and their exports, and an image's provenance."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.response import Response

from apps.accounts.roles import MODEL_ADMIN
from apps.api.links import located
from apps.api.schema import errors
from apps.api.views import FileView, RoleView
from apps.models import services as registry
from apps.models.api import serializers as s
from apps.models.models import DatasetSnapshot, ModelVersion, TrainingRun


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
        return Response(body, status=202, headers=located(request, "training-run-detail", run.pk))


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
