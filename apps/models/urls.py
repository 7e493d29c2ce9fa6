from django.urls import path

from apps.models import dataset_views, inspector_views, notification_views, run_views, views

app_name = "registry"

urlpatterns = [
    path("", views.registry, name="index"),
    path("versions/<int:pk>/", views.version_detail, name="version"),
    path("versions/<int:pk>/promote/", views.promote, name="promote"),
    path("versions/<int:pk>/operating-point/", views.operating_point, name="operating-point"),
    path("versions/<int:pk>/plots/<slug:kind>.svg", views.version_plot, name="plot"),
    path(
        "versions/<int:pk>/training-animation.gif",
        views.training_animation,
        name="training-animation",
    ),
    path("compare/", views.compare, name="compare"),
    path("rollback/", views.rollback, name="rollback"),
    path("versions/<int:pk>/archive/", run_views.archive, name="archive"),
    path("training-runs/", run_views.start_training, name="start-training"),
    path("training-runs/<int:pk>/", run_views.run_detail, name="run"),
    path("notifications/read/", notification_views.mark_read, name="notifications-read"),
    path("snapshots/", dataset_views.snapshot_list, name="snapshots"),
    path("snapshots/<int:pk>/", dataset_views.snapshot_detail, name="snapshot"),
    path("snapshots/<int:pk>/export.zip", dataset_views.snapshot_export, name="snapshot-export"),
    path("exports/confirmed-labels.zip", dataset_views.confirmed_export, name="confirmed-export"),
    path(
        "images/<int:pk>/provenance/",
        dataset_views.image_provenance_page,
        name="image-provenance",
    ),
    path("inspector/", inspector_views.inspector_form, name="inspector"),
    path("inspector/<int:pk>/", inspector_views.inspection_detail, name="inspection"),
    path(
        "inspector/pictures/<int:pk>.png",
        inspector_views.inspection_picture,
        name="inspection-picture",
    ),
]
