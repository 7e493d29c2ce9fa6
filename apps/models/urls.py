from django.urls import path

from apps.models import views

app_name = "registry"

urlpatterns = [
    path("", views.registry, name="index"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/promote/", views.promote, name="promote"),
    path("versions/<int:pk>/plots/<slug:kind>.svg", views.version_plot, name="plot"),
    path(
        "versions/<int:pk>/training-animation.gif",
        views.training_animation,
        name="training-animation",
    ),
    path("compare/", views.compare, name="compare"),
    path("rollback/", views.rollback, name="rollback"),
    path("training-runs/", views.start_training, name="start-training"),
]
