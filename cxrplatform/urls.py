from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.accounts.views import home

urlpatterns = [
    path("", home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("cases/", include("apps.cases.urls")),
    path("explanations/", include("apps.explain.urls")),
    path("registry/", include("apps.models.urls")),
    path("admin/", admin.site.urls),
]
