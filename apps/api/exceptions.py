"""One error body for every API failure.

``{"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"label": ["..."]}}}``

``fields`` maps a request field to its messages (nested fields are dotted:
``images.0``) and is empty when the error concerns no field. Upload
refusals from ``apps.cases.validation`` keep their status (400, 413, 415) and
their message, which names the file. Every domain refusal
(``cxrplatform.errors.Refused``: a retry of a job that did not fail, a promotion
the gate refuses, ...) is a 409 ``conflict`` with the service's message, here
and nowhere else.
"""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from rest_framework import exceptions, status
from rest_framework.views import exception_handler

from apps.cases.uploads import FileTooLarge, RequestTooLarge
from apps.cases.validation import UploadRejected
from cxrplatform.errors import Refused

UPLOAD_CODES = {413: "payload_too_large", 415: "unsupported_media_type", 400: "invalid_image"}


class Conflict(exceptions.APIException):
    """The request is well formed but the resource's state does not allow it (yet)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The resource's current state does not allow this."
    default_code = "conflict"


class UploadProblem(exceptions.APIException):
    def __init__(self, rejected: UploadRejected) -> None:
        self.status_code = rejected.status
        super().__init__(str(rejected), UPLOAD_CODES.get(rejected.status, "invalid_image"))
        self.fields = {"images": [str(rejected)]}


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


def _flatten(errors, prefix: str = "") -> dict[str, list[str]]:
    if isinstance(errors, dict):
        flat: dict[str, list[str]] = {}
        for key, value in errors.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            flat.update(_flatten(value, name))
        return flat
    if isinstance(errors, list) and any(isinstance(item, dict | list) for item in errors):
        flat = {}
        for index, value in enumerate(errors):
            if value:
                flat.update(_flatten(value, f"{prefix}.{index}" if prefix else str(index)))
        return flat
    messages = errors if isinstance(errors, list) else [errors]
    return {prefix or "non_field_errors": [str(m) for m in messages]}


def _converted(exc: Exception) -> Exception:
    if isinstance(exc, Refused):
        return Conflict(str(exc))
    if isinstance(exc, UploadRejected):
        return UploadProblem(exc)
    if isinstance(exc, FileTooLarge):  # the upload handler stopped reading at this file
        return UploadProblem(UploadRejected(exc.filename, exc.problem, status=413))
    if isinstance(exc, RequestTooLarge):
        return PayloadTooLarge(str(exc))
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge()
    if isinstance(exc, TooManyFilesSent):
        problem = exceptions.ValidationError({"images": [f"Too many files: {exc}"]})
        return problem
    if isinstance(exc, TooManyFieldsSent):
        return exceptions.ValidationError(f"Too many fields: {exc}")
    return exc


def api_exception_handler(exc: Exception, context: dict):
    exc = _converted(exc)
    response = exception_handler(exc, context)
    if response is None:
        return None  # a server error: Django's 500 handling and logging
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(response.data)
        names = ", ".join(name for name in fields if name != "non_field_errors")
        if names:
            message = f"Invalid input in: {names}."
        else:
            message = " ".join(fields.get("non_field_errors", ["Invalid input."]))
        code = "invalid"
    else:
        detail = getattr(exc, "detail", response.data)
        message = str(detail.get("detail", detail) if isinstance(detail, dict) else detail)
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = codes if isinstance(codes, str) else "error"
        fields = getattr(exc, "fields", {})
    response.data = {
        "error": {
            "status": response.status_code,
            "code": code,
            "message": message,
            "fields": fields,
        }
    }
    return response
