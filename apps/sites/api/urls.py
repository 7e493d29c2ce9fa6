"""The sites' API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.sites.api import views

urlpatterns = [
    path("sites/", views.SiteList.as_view(), name="site-list"),
    path(
        "sites/<int:pk>/models/<int:model>/validation/",
        views.SiteValidation.as_view(),
        name="site-validation",
    ),
    path(
        "sites/<int:pk>/models/<int:model>/operating-points/",
        views.SiteOperatingPoints.as_view(),
        name="site-operating-points",
    ),
    path(
        "sites/<int:pk>/models/<int:model>/operating-points/propose/",
        views.SiteOperatingPointProposal.as_view(),
        name="site-operating-point-propose",
    ),
    path(
        "sites/<int:pk>/models/<int:model>/operating-points/rollback/",
        views.SiteOperatingPointRollback.as_view(),
        name="site-operating-point-rollback",
    ),
    path("sites/<int:pk>/drift/", views.SiteDrift.as_view(), name="site-drift"),
]
