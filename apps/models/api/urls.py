"""The model registry's API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.models.api import views

urlpatterns = [
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
]
