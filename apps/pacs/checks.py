"""System checks: the PACS settings that name peers must parse (a typo fails at start,
not at the first study)."""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, register


@register()
def pacs_settings(app_configs, **kwargs) -> list[Error]:
    from apps.pacs.returns import Destination
    from apps.pacs.scp import Allowed

    errors = []
    for item in settings.CXR_DICOM_ALLOWED:
        try:
            Allowed.parse(item)
        except ValueError as exc:
            errors.append(Error(f"CXR_DICOM_ALLOWED: {exc}", id="pacs.E001"))
    if settings.CXR_PACS_DESTINATION and not settings.CXR_PACS_DESTINATION.startswith(
        ("http://", "https://")
    ):
        try:
            Destination.parse(settings.CXR_PACS_DESTINATION)
        except ValueError as exc:
            errors.append(Error(f"CXR_PACS_DESTINATION: {exc}", id="pacs.E002"))
    check = settings.CXR_DICOM_LISTENER_CHECK
    if check and not check.rpartition(":")[2].isdigit():
        errors.append(
            Error(f"CXR_DICOM_LISTENER_CHECK: {check!r} is not host:port", id="pacs.E003")
        )
    if len(settings.CXR_DICOM_AE_TITLE) > 16:
        errors.append(Error("CXR_DICOM_AE_TITLE: at most 16 characters", id="pacs.E004"))
    return errors
