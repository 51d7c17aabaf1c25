"""OpenAPI description of the HOMEPOT API (drf-spectacular).

Documents the bearer-token scheme and the one error shape of homepot.api.errors on every
operation, so a client generated from the schema knows both.
"""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A HOMEPOT API token: `Authorization: Bearer <token>` "
            "(`Token <token>` works too).",
        }


class ErrorBodySerializer(serializers.Serializer):
    status = serializers.IntegerField(help_text="The HTTP status, repeated.")
    code = serializers.CharField(help_text="A stable machine-readable code, e.g. `invalid`, `duplicate`.")
    message = serializers.CharField(help_text="What went wrong, for people.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Messages per input at fault, keyed by field or query parameter name.",
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


_ERROR_DESCRIPTIONS = {
    400: "Invalid input; `fields` names each field or query parameter at fault.",
    401: "Not authenticated (no, expired or revoked token).",
    403: "Authenticated, but not allowed to do this.",
    404: "No such object, or it is outside your sites (on a list: a page past the end, or a "
    "cursor the API did not give).",
    409: "Conflicts with existing data (a duplicate id, a site that still has devices).",
    413: "Request body larger than the configured limit.",
}


class HomepotAutoSchema(AutoSchema):
    """Adds the error responses each kind of operation can give to the generated schema."""

    def _error_statuses(self) -> list[int]:
        method = self.method.upper()
        statuses = [401, 403]
        if method in {"POST", "PUT", "PATCH"}:
            statuses += [400, 409, 413]
        if method == "GET" and (self._is_list_view() or self.get_filter_backends()):
            statuses.append(400)  # a malformed filter or page size
            if self._is_list_view() and self._is_paginated():
                statuses.append(404)  # a page past the end, or a cursor that is not ours
        if method == "DELETE":
            statuses.append(409)
        if "{" in self.path and 404 not in statuses:
            statuses.append(404)
        return sorted(statuses)

    def _is_paginated(self) -> bool:
        return getattr(self.view, "pagination_class", None) is not None

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        for status in self._error_statuses():
            responses.setdefault(
                str(status),
                self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_ERROR_DESCRIPTIONS[status]),
                    str(status),
                    direction=direction,
                ),
            )
        return responses
