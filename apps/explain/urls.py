from django.urls import path

from apps.cases.retry_views import job_retry
from apps.explain import views

app_name = "explain"

urlpatterns = [
    path("images/<int:image_pk>/request/", views.request_method, name="request"),
    # The one retry view of every job on a case image (apps.cases.retry_views).
    path("<int:pk>/retry/", job_retry, {"label": "explain.explanation"}, name="retry"),
    path("<int:pk>/overlay.png", views.overlay, name="overlay"),
    # The picture the viewer shows (whole image, heatmap where it lies), as a named file.
    path("<int:pk>/download.png", views.overlay_download, name="overlay-download"),
    path("<int:pk>/layer.png", views.layer, name="layer"),
    path("<int:pk>/heatmap.npy", views.heatmap, name="heatmap"),
    # A labelling page's maps, by the image's reference and the method (never an id).
    path("labelling/<str:ref>/<str:method>/layer.png", views.reader_layer, name="reader-layer"),
    path(
        "labelling/<str:ref>/<str:method>/overlay.png",
        views.reader_overlay,
        name="reader-overlay",
    ),
    path(
        "labelling/<str:ref>/<str:method>/download.png",
        views.reader_overlay_download,
        name="reader-overlay-download",
    ),
    path(
        "labelling/<str:ref>/<str:method>/heatmap.npy",
        views.reader_heatmap,
        name="reader-heatmap",
    ),
]
