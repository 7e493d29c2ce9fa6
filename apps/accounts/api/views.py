"""API views of accounts: obtaining, listing and revoking tokens, and who you are."""

from __future__ import annotations

from django.contrib.auth import authenticate
from django.contrib.auth.signals import user_logged_in
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from knox.models import AuthToken
from rest_framework import generics, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.parsers import FormParser, JSONParser
from rest_framework.permissions import AllowAny
from rest_framework.response import Response

from apps.accounts import tokens
from apps.accounts.api import serializers as s
from apps.accounts.roles import user_roles
from apps.api.permissions import ANY_AUTHENTICATED
from apps.api.schema import errors
from apps.api.throttles import AuthTokenThrottle
from apps.api.views import RoleView


class TokenView(RoleView):
    """POST: exchange a username and password for a new API token (throttled per client
    address; the account locks after repeated failures). DELETE: revoke the token the
    request is sent with (with a browser session: all of the user's tokens)."""

    allowed_roles = ANY_AUTHENTICATED
    parser_classes = [JSONParser, FormParser]

    def get_authenticators(self):
        # Obtaining a token takes credentials in the body, never a token or a session.
        if self.request is not None and self.request.method == "POST":
            return []
        return super().get_authenticators()

    def get_permissions(self):
        if self.request is not None and self.request.method == "POST":
            return [AllowAny()]
        return super().get_permissions()

    def get_throttles(self):
        if self.request is not None and self.request.method == "POST":
            return [AuthTokenThrottle()]
        return []

    @extend_schema(
        operation_id="auth_token_obtain",
        summary="Obtain an API token",
        description="Each call issues a new token (one per tool), valid until `expiry`. "
        "Only a digest is stored: keep the token, it is not shown again. After repeated "
        "failures the account is locked for a while (429, `code` `locked_out`).",
        request=s.TokenRequestSerializer,
        responses={200: s.TokenSerializer, **errors(400, 415, 429)},
        auth=[],
        tags=["auth"],
    )
    def post(self, request):
        serializer = s.TokenRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        # The Django request: django-axes counts failures on it and answers a lockout.
        user = authenticate(
            request=request._request,
            username=serializer.validated_data["username"],
            password=serializer.validated_data["password"],
        )
        if user is None:
            # As OAuth 2's token endpoint: wrong credentials are a 400, not a 401.
            raise ValidationError("Unable to log in with these credentials.")
        token, key = tokens.issue_token(user=user)
        # A log-in like the web one: last_login, and django-axes resets the failure count.
        user_logged_in.send(sender=type(user), request=request._request, user=user)
        return Response({"token": key, "id": token.token_key, "expiry": token.expiry})

    @extend_schema(
        operation_id="auth_token_revoke",
        summary="Revoke the API token this request is sent with",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), **errors(401)},
        tags=["auth"],
    )
    def delete(self, request):
        if isinstance(request.auth, AuthToken):
            tokens.revoke_token(token=request.auth, actor=request.user)
        else:  # a browser session: the user's every token
            tokens.revoke_all_tokens(
                user=request.user, actor=request.user, reason="revoked by its owner"
            )
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema_view(
    get=extend_schema(
        summary="Your API tokens",
        description="Every token of yours that has not expired, newest first; `current` "
        "marks the one this request is sent with. The tokens themselves are never shown.",
        responses={200: s.TokenInfoSerializer(many=True), **errors(400, 401, 404)},
        tags=["auth"],
    )
)
class TokenList(generics.ListAPIView, RoleView):
    allowed_roles = ANY_AUTHENTICATED
    serializer_class = s.TokenInfoSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuthToken.objects.none()
        return tokens.active_tokens(self.request.user)


class TokenDetail(RoleView):
    allowed_roles = ANY_AUTHENTICATED

    @extend_schema(
        summary="Revoke one of your API tokens",
        request=None,
        responses={204: OpenApiResponse(description="Revoked."), **errors(401, 404)},
        tags=["auth"],
    )
    def delete(self, request, token_id: str):
        token = tokens.active_tokens(request.user).filter(token_key=token_id).first()
        if token is None:
            raise NotFound("You have no token with this id.")
        tokens.revoke_token(token=token, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class Me(RoleView):
    """Who the request is authenticated as. Also the framework floor of ``make bench``: an
    authenticated DRF JSON response with nothing behind it but authentication."""

    allowed_roles = ANY_AUTHENTICATED

    @extend_schema(
        summary="Who you are: your user name and roles",
        responses={200: s.MeSerializer, **errors(401)},
        tags=["auth"],
    )
    def get(self, request):
        return Response(
            {"username": request.user.get_username(), "roles": sorted(user_roles(request.user))}
        )
