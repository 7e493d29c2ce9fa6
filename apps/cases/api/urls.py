"""The cases' API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.cases.api import views

urlpatterns = [
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
        "images/<int:pk>/prediction/retry/",
        views.ImagePredictionRetry.as_view(),
        name="image-prediction-retry",
    ),
    path("labelling/queue/", views.LabellingQueue.as_view(), name="labelling-queue"),
    path("labelling/mine/", views.LabellingMine.as_view(), name="labelling-mine"),
    # A reader's image routes take its opaque reference (apps.cases.access.image_ref).
    path("labelling/images/<str:ref>/", views.LabellingImage.as_view(), name="labelling-image"),
    path(
        "labelling/images/<str:ref>/file/",
        views.LabellingImageFile.as_view(),
        name="labelling-image-file",
    ),
    path(
        "labelling/images/<str:ref>/labels/",
        views.LabellingImageLabels.as_view(),
        name="labelling-image-labels",
    ),
    path(
        "labelling/images/<str:ref>/explanations/<str:method>/overlay/",
        views.LabellingExplanationOverlay.as_view(),
        name="labelling-explanation-overlay",
    ),
]
