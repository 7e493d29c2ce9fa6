from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.accounts.views import home
from apps.api.throttles import LoginThrottle, throttle_posts

urlpatterns = [
    path("", home, name="home"),
    # Log-in attempts are throttled per client address, like the API's token endpoint.
    path("login/", throttle_posts(LoginThrottle)(auth_views.LoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("cases/", include("apps.cases.urls")),
    path("explanations/", include("apps.explain.urls")),
    path("registry/", include("apps.models.urls")),
    path("api/v1/", include("apps.api.urls")),
    path("admin/", admin.site.urls),
]
