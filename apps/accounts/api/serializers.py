"""The API's representations of tokens and of the requesting user."""

from __future__ import annotations

from rest_framework import serializers


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False)


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(
        read_only=True, help_text="Send as `Authorization: Token <token>`; shown only once."
    )
    id = serializers.CharField(
        read_only=True, help_text="The token's first characters: its name in the token list."
    )
    expiry = serializers.DateTimeField(
        read_only=True, help_text="The token stops working at this time."
    )


class TokenInfoSerializer(serializers.Serializer):
    """One of your tokens, without the token itself (only its digest is stored)."""

    id = serializers.CharField(source="token_key", read_only=True)
    created = serializers.DateTimeField(read_only=True)
    expiry = serializers.DateTimeField(read_only=True, allow_null=True)
    current = serializers.SerializerMethodField(
        help_text="True for the token this request was sent with."
    )

    def get_current(self, token) -> bool:
        request = self.context.get("request")
        return request is not None and getattr(request.auth, "pk", None) == token.pk


class MeSerializer(serializers.Serializer):
    username = serializers.CharField(read_only=True)
    roles = serializers.ListField(
        child=serializers.CharField(),
        read_only=True,
        help_text="clinician, annotator, adjudicator, model_admin: what this account may do.",
    )
