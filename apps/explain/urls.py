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
]
