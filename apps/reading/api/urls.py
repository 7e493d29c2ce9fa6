"""The reading room's API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.reading.api import views

urlpatterns = [
    path("reading/worklist/", views.Worklist.as_view(), name="reading-worklist"),
    path("reading/cases/<int:pk>/reports/", views.CaseReports.as_view(), name="reading-reports"),
]
