"""Serving stored files (uploads, heatmaps, overlays) only through authorised views.

Media is never public: a view first decides who may see the file, then calls
``protected_file_response``. By default Django streams the file. In
production a reverse proxy can do the streaming instead: with
``CXR_PROTECTED_MEDIA_ACCEL_PREFIX=/protected/`` the response is empty and
carries ``X-Accel-Redirect: /protected/<storage name>``, which nginx serves
from an ``internal`` location (unreachable from outside), so a slow download
does not hold a web worker::

    location /protected/ {
        internal;
        alias /srv/cxr/media/;   # MEDIA_ROOT
    }
"""

from __future__ import annotations

from urllib.parse import quote

from django.conf import settings
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.utils.http import content_disposition_header

CACHE_CONTROL = "private, no-store"


def protected_file_response(
    field_file: FieldFile, content_type: str, download_name: str | None = None
) -> HttpResponseBase:
    """The file's bytes (or an X-Accel-Redirect to them) for a user already authorised.

    The caller has checked access; this function only decides *how* the bytes
    travel. ``Cache-Control: private, no-store`` keeps shared caches and the
    browser's disk cache from keeping patient images. A missing file is a 404.
    """
    if not field_file or not field_file.name:
        raise Http404("No file is stored for this item.")
    prefix = settings.CXR_PROTECTED_MEDIA_ACCEL_PREFIX
    if prefix:
        response: HttpResponseBase = HttpResponse(content_type=content_type)
        # Storage names are generated (random hex, no user input); quote anyway.
        response["X-Accel-Redirect"] = prefix.rstrip("/") + "/" + quote(field_file.name)
    else:
        try:
            handle = field_file.open("rb")
        except (FileNotFoundError, ValueError):
            raise Http404("The file is missing from storage.") from None
        response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = CACHE_CONTROL
    response["X-Content-Type-Options"] = "nosniff"
    if download_name:
        response["Content-Disposition"] = content_disposition_header(
            as_attachment=True, filename=download_name
        )
    return response
