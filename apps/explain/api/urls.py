"""The explanations' API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.explain.api import views

urlpatterns = [
    path(
        "images/<int:pk>/explanations/",
        views.ImageExplanations.as_view(),
        name="image-explanations",
    ),
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
]
