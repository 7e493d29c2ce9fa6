from django.urls import path

from apps.models import views

app_name = "registry"

urlpatterns = [
    path("", views.registry, name="index"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/promote/", views.promote, name="promote"),
    path("rollback/", views.rollback, name="rollback"),
    path("training-runs/", views.start_training, name="start-training"),
]
