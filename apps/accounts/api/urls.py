"""The accounts' API routes (``apps.api.urls`` puts them under ``/api/v1/``)."""

from django.urls import path

from apps.accounts.api import views

urlpatterns = [
    path("auth/token/", views.TokenView.as_view(), name="token"),
    path("auth/tokens/", views.TokenList.as_view(), name="token-list"),
    path("auth/tokens/<str:token_id>/", views.TokenDetail.as_view(), name="token-detail"),
    path("me/", views.Me.as_view(), name="me"),
]
