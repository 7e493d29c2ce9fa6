"""The API's routes under ``/api/v1/``: each app's own (``apps/<app>/api/urls.py``, in the
``api`` namespace), the schema and its documentation pages, and the API's 404."""

from csp.constants import SELF, UNSAFE_INLINE
from csp.decorators import csp_update
from django.urls import path, re_path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from apps.accounts.api import urls as accounts
from apps.api import views
from apps.cases.api import urls as cases
from apps.explain.api import urls as explain
from apps.models.api import urls as models
from apps.reading.api import urls as reading
from apps.sites.api import urls as sites

app_name = "api"

# The documentation pages (no patient data) carry inline <style> elements and draw icons
# from data: URLs; Redoc runs a blob: worker. Scripts stay files: Swagger UI's set-up
# script is a request of its own (the split view), Redoc's page has none.
docs_csp = csp_update(
    {"style-src": [UNSAFE_INLINE], "img-src": ["data:"], "worker-src": [SELF, "blob:"]}
)

urlpatterns = [
    # Each app's endpoints, from its api package (apps/<app>/api/urls.py).
    *accounts.urlpatterns,
    *cases.urlpatterns,
    *explain.urlpatterns,
    *models.urlpatterns,
    *sites.urlpatterns,
    *reading.urlpatterns,
    # Documentation is public (it holds no data); served from local static files.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[]), name="schema"),
    path(
        "docs/",
        docs_csp(SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[])),
        name="docs",
    ),
    path(
        "redoc/",
        docs_csp(
            SpectacularRedocView.as_view(
                url_name="api:schema", permission_classes=[], template_name="api/redoc.html"
            )
        ),
        name="redoc",
    ),
    # Anything else under /api/v1/ (a negative id, a typo) is a 404 in the API's error body.
    re_path(r"^.*$", views.not_found, name="not-found"),
]
