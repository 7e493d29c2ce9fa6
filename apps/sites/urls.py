from django.urls import path

from apps.sites import views

app_name = "sites"

urlpatterns = [
    path("", views.site_list, name="index"),
    path("<int:pk>/users/", views.site_users, name="users"),
    path("<int:pk>/users/<int:user_pk>/unlock/", views.unlock, name="unlock"),
    path("<int:pk>/models/<int:model>/validation/", views.validation, name="validation"),
    path("<int:pk>/models/<int:model>/validation.csv", views.validation_csv, name="validation-csv"),
    path(
        "<int:pk>/models/<int:model>/reliability.svg",
        views.reliability_plot,
        name="reliability",
    ),
    path(
        "<int:pk>/models/<int:model>/operating-point/",
        views.operating_point,
        name="operating-point",
    ),
    path("<int:pk>/drift/", views.drift, name="drift"),
    path("<int:pk>/drift/<slug:feature>.svg", views.drift_plot, name="drift-plot"),
]
