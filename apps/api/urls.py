from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from apps.api import views

app_name = "api"

# The documentation pages (no patient data) carry inline <style> elements and draw icons
# from data: URLs; Redoc runs a blob: worker. Scripts stay files: Swagger UI's set-up
# script is a request of its own (the split view), Redoc's page has none.
docs_csp = csp_update(
    {"style-src": [UNSAFE_INLINE], "img-src": ["data:"], "worker-src": [SELF, "blob:"]}
)

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("auth/tokens/", views.TokenList.as_view(), name="token-list"),
    path("auth/tokens/<str:token_id>/", views.TokenDetail.as_view(), name="token-detail"),
    path("me/", views.Me.as_view(), name="me"),
    path("cases/", views.CaseListCreate.as_view(), name="case-list"),
    path("cases/<int:pk>/", views.CaseDetail.as_view(), name="case-detail"),
    path("images/", views.ImageList.as_view(), name="image-list"),
    path("images/<int:pk>/", views.ImageDetail.as_view(), name="image-detail"),
    path("images/<int:pk>/file/", views.ImageFile.as_view(), name="image-file"),
    path("images/<int:pk>/lung-mask/", views.ImageLungMask.as_view(), name="image-lung-mask"),
    path(
        "images/<int:pk>/lung-outline/",
        views.ImageLungOutline.as_view(),
        name="image-lung-outline",
    ),
    path(
        "images/<int:pk>/segmentation/",
        views.ImageSegmentation.as_view(),
        name="image-segmentation",
    ),
    path(
        "images/<int:pk>/segmentation/masks/<str:kind>/",
        views.ImageSegmentationMask.as_view(),
        name="image-segmentation-mask",
    ),
    path(
        "images/<int:pk>/segmentation/retry/",
        views.ImageSegmentationRetry.as_view(),
        name="image-segmentation-retry",
    ),
    path(
        "images/<int:pk>/explanations/",
        views.ImageExplanations.as_view(),
        name="image-explanations",
    ),
    path("images/<int:pk>/labels/", views.ImageLabels.as_view(), name="image-labels"),
    path(
        "images/<int:pk>/prediction/retry/",
        views.ImagePredictionRetry.as_view(),
        name="image-prediction-retry",
    ),
    path("labelling/queue/", views.LabellingQueue.as_view(), name="labelling-queue"),
    path("explanations/<int:pk>/", views.ExplanationDetail.as_view(), name="explanation-detail"),
    path(
        "explanations/<int:pk>/retry/",
        views.ExplanationRetry.as_view(),
        name="explanation-retry",
    ),
    path(
        "explanations/<int:pk>/overlay/",
        views.ExplanationOverlay.as_view(),
        name="explanation-overlay",
    ),
    path(
        "explanations/<int:pk>/heatmap/",
        views.ExplanationHeatmap.as_view(),
        name="explanation-heatmap",
    ),
    path("models/", views.ModelVersionList.as_view(), name="model-list"),
    path("models/rollback/", views.ModelRollback.as_view(), name="model-rollback"),
    path("models/<int:pk>/", views.ModelVersionDetail.as_view(), name="model-detail"),
    path("models/<int:pk>/promote/", views.ModelVersionPromote.as_view(), name="model-promote"),
    path(
        "models/<int:pk>/operating-point/",
        views.ModelVersionOperatingPoint.as_view(),
        name="model-operating-point",
    ),
    path("training-runs/", views.TrainingRunListCreate.as_view(), name="training-run-list"),
    path(
        "training-runs/<int:pk>/",
        views.TrainingRunDetail.as_view(),
        name="training-run-detail",
    ),
    path("images/<int:pk>/provenance/", views.ImageProvenance.as_view(), name="image-provenance"),
    path("snapshots/", views.SnapshotList.as_view(), name="snapshot-list"),
    path("snapshots/<int:pk>/", views.SnapshotDetail.as_view(), name="snapshot-detail"),
    path("snapshots/<int:pk>/export/", views.SnapshotExport.as_view(), name="snapshot-export"),
    # Documentation is public (it holds no data); served from local static files.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path(
        "docs/",
        docs_csp(SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[])),
        name="docs",
    ),
    path(
        "redoc/",
        docs_csp(
            SpectacularRedocView.as_view(
                url_name="api:schema", permission_classes=[], template_name="api/redoc.html"
            )
        ),
        name="redoc",
    ),
    # Anything else under /api/v1/ (a negative id, a typo) is a 404 in the API's error body.
    re_path(r"^.*$", views.not_found, name="not-found"),
]
