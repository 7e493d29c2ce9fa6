"""OpenAPI pieces shared by the views: the error body and the responses that carry it."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import serializers

ERROR_BODY = inline_serializer(
    name="Error",
    fields={
        "error": inline_serializer(
            name="ErrorDetail",
            fields={
                "status": serializers.IntegerField(),
                "code": serializers.CharField(),
                "message": serializers.CharField(),
                "fields": serializers.DictField(
                    child=serializers.ListField(child=serializers.CharField()),
                    help_text="Messages per request field; empty when no field is at fault.",
                ),
            },
        )
    },
)

DESCRIPTIONS = {
    400: "Invalid request: `fields` names each invalid field.",
    401: "Not authenticated: send `Authorization: Token <key>`.",
    403: "Your role does not give access to this endpoint.",
    404: "Not found, or not yours to see.",
    409: "The resource's current state does not allow this.",
    413: "An uploaded file is too large (the message names it).",
    415: "Unsupported media type: a body or file of the wrong type (the message names it).",
    429: "Too many requests; see Retry-After.",
}


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    """Responses with the error body, for ``extend_schema(responses={...})``."""
    return {code: OpenApiResponse(ERROR_BODY, description=DESCRIPTIONS[code]) for code in codes}


def empty_query_values_mean_any(result: dict, generator, request, public) -> dict:
    """drf-spectacular post-processing hook: say that an empty query value is allowed.

    ``?status=&created_after=`` is what the web's filter form sends for "any",
    and django-filter and the paginator treat an empty value as absent; the
    schema says so, or a client (and schemathesis) would read it as invalid.
    """
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query":
                    parameter["allowEmptyValue"] = True
                if parameter.get("name") in {"page", "page_size"}:
                    parameter["schema"]["minimum"] = 1
    return result
