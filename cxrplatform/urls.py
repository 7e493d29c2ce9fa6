from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from apps.accounts.audit_log import audit_log
from apps.accounts.views import home
from apps.api.throttles import LoginThrottle, throttle_posts

urlpatterns = [
    path("", home, name="home"),
    # Log-in attempts are throttled per client address, like the API's token endpoint.
    path("login/", throttle_posts(LoginThrottle)(auth_views.LoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Password change and reset, users and roles (apps.accounts.urls).
    path("account/", include("apps.accounts.urls")),
    # Model admins read the audit log (filters, CSV export).
    path("audit/", audit_log, name="audit-log"),
    path("cases/", include("apps.cases.urls")),
    path("explanations/", include("apps.explain.urls")),
    path("registry/", include("apps.models.urls")),
    path("generator/", include("apps.generator.urls")),
    # Sites: their accounts, local validation studies and site operating points.
    path("sites/", include("apps.sites.urls")),
    # The reading room: radiologists' worklist, viewer and signed reports.
    path("reading/", include("apps.reading.urls")),
    path("api/v1/", include("apps.api.urls")),
    # The admin's log-in shares the web log-in's per-address count (django-axes adds the
    # per-account lockout to both, and to the API's token endpoint).
    path("admin/login/", throttle_posts(LoginThrottle)(admin.site.login), name="admin-login"),
    path("admin/", admin.site.urls),
]
