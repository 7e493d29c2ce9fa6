"""API views of sites: the sites, a version's local validation study at a site, and the
site's operating points (propose, apply, roll back). Model admins only."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.response import Response

from apps.accounts.roles import MODEL_ADMIN
from apps.api.schema import errors
from apps.api.views import RoleView
from apps.models.models import ModelVersion, Task
from apps.sites import services
from apps.sites.api import serializers as s
from apps.sites.models import Site


def _subjects(pk: int, model: int) -> tuple[Site, ModelVersion]:
    site = get_object_or_404(Site, pk=pk)
    version = get_object_or_404(ModelVersion.objects.of_task(Task.CLASSIFICATION), pk=model)
    return site, version


def _target(request) -> dict:
    serializer = s.ApplyRequestSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


@extend_schema_view(
    get=extend_schema(
        summary="Sites (model admin)",
        responses={200: s.SiteSerializer(many=True), **errors(400, 401, 403, 404)},
        tags=["sites"],
    )
)
class SiteList(generics.ListAPIView, RoleView):
    allowed_roles = (MODEL_ADMIN,)
    serializer_class = s.SiteSerializer
    queryset = Site.objects.all()


class SiteValidation(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="A version's local validation study at a site (model admin; audited)",
        description="From the site's images with a confirmed label and a prediction by the "
        "version: counts per class, COVID-19 sensitivity, specificity, PPV and NPV, "
        "normals called normal, accuracy, AUROCs, calibration (ECE, reliability bins) "
        "and per-class recall, each with a 95 % bootstrap interval and a warning when "
        "too wide to decide; beside the figures stored for the version's own test split. "
        "409 when the site has no such image. Audited (`site.validation_viewed`).",
        responses={200: s.StudySerializer, **errors(401, 403, 404, 409)},
        tags=["sites"],
    )
    def get(self, request, pk: int, model: int):
        site, version = _subjects(pk, model)
        study = services.validate(site=site, version=version)
        services.record_validation_viewed(
            actor=request.user, study=study, via="api", request=request
        )
        return Response(study.to_dict())


@extend_schema_view(
    get=extend_schema(
        summary="A site's operating points for a version (model admin)",
        responses={200: s.OperatingPointsSerializer, **errors(401, 403, 404)},
        tags=["sites"],
    ),
    post=extend_schema(
        summary="Apply a site operating point for a target (model admin; audited)",
        description="Proposes again from the site's labels and makes it the site's active "
        "point for the version: the site's next predictions by it take their label at "
        "its offsets; other sites are untouched. 400 for an unknown target or a goal "
        "outside (0, 1]; 409 when the site has no labelled image to measure the target "
        "on, or `offsets` no longer match the proposal. Audited (`site.point_applied`).",
        request=s.ApplyRequestSerializer,
        responses={201: s.SiteOperatingPointSerializer, **errors(400, 401, 403, 404, 409, 415)},
        tags=["sites"],
    ),
)
class SiteOperatingPoints(RoleView):
    allowed_roles = (MODEL_ADMIN,)
    parser_classes = [JSONParser]

    def get(self, request, pk: int, model: int):
        site, version = _subjects(pk, model)
        active = services.active_point(site, version)
        return Response(
            {
                "active": s.SiteOperatingPointSerializer(active).data if active else None,
                "history": s.SiteOperatingPointSerializer(
                    services.history(site, version), many=True
                ).data,
            }
        )

    def post(self, request, pk: int, model: int):
        site, version = _subjects(pk, model)
        data = _target(request)
        point = services.apply_point(
            actor=request.user,
            site=site,
            version=version,
            target=data["target"],
            goal=data["goal"],
            expected_offsets=data.get("offsets"),
        )
        return Response(s.SiteOperatingPointSerializer(point).data, status=201)


class SiteOperatingPointProposal(RoleView):
    allowed_roles = (MODEL_ADMIN,)
    parser_classes = [JSONParser]

    @extend_schema(
        summary="Propose a site operating point for a target (model admin; writes nothing)",
        description="The offsets that reach `target` >= `goal` on the site's labels, and "
        "every figure at them with its interval. 400 for an unknown target or a goal "
        "outside (0, 1]; 409 when the site has no labelled image to measure it on.",
        request=s.TargetRequestSerializer,
        responses={200: s.ProposalSerializer, **errors(400, 401, 403, 404, 409, 415)},
        tags=["sites"],
    )
    def post(self, request, pk: int, model: int):
        site, version = _subjects(pk, model)
        serializer = s.TargetRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            proposal = services.propose(site=site, version=version, **serializer.validated_data)
        except services.SiteInputError as exc:
            raise ValidationError(str(exc)) from None
        return Response(proposal.to_dict())


class SiteOperatingPointRollback(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="Roll a site's operating point back to the one before (model admin; audited)",
        description="The point the active one replaced serves again (null: the model's "
        "own point). 409 when the site has no point applied. Audited "
        "(`site.point_rolled_back`).",
        request=None,
        responses={200: s.RollbackResultSerializer, **errors(401, 403, 404, 409)},
        tags=["sites"],
    )
    def post(self, request, pk: int, model: int):
        site, version = _subjects(pk, model)
        restored = services.roll_back(actor=request.user, site=site, version=version)
        body = s.SiteOperatingPointSerializer(restored).data if restored else None
        return Response({"active": body})


class SiteDrift(RoleView):
    allowed_roles = (MODEL_ADMIN,)

    @extend_schema(
        summary="A site's drift against the model's reference (model admin)",
        description="The newest check of each feature (OOD score, lung-field area, "
        "intensity inside the lungs, confidence, predicted-class shares) of the site's "
        "rolling window against the version's reference: PSI, KS with its p-value and the "
        "level (none, moderate, drift, too few). `model`: a classifier version's id "
        "(default: the production one); `reference` null: no reference for it.",
        parameters=[OpenApiParameter("model", int, required=False, description="A version's id.")],
        responses={200: s.DriftReportSerializer, **errors(400, 401, 403, 404)},
        tags=["sites"],
    )
    def get(self, request, pk: int):
        from apps.sites import drift

        site = get_object_or_404(Site, pk=pk)
        model = request.query_params.get("model", "")
        version: ModelVersion | None
        if model:
            if not model.isdigit():
                raise ValidationError({"model": "A model version's id."})
            version = _subjects(pk, int(model))[1]
        else:
            version = ModelVersion.objects.production(task=Task.CLASSIFICATION)
        return Response(s.DriftReportSerializer(drift.report(site, version)).data)
