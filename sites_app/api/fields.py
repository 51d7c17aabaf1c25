"""Serializer fields shared by every API that names a site."""

from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import build_basic_type
from drf_spectacular.types import OpenApiTypes
from rest_framework import serializers

from sites_app.selectors import site_for_reference


class SiteReferenceField(serializers.Field):
    """A site, written as its internal id (`3`, as the guide does) or its business id
    (`"site-003"`); read back as the internal id.

    Only sites the requesting user may `scope_action` ("change" by default) are found; any
    other site is reported as unknown, so the answer never reveals another operator's sites.
    """

    default_error_messages = {
        "invalid": "Give the site's internal id (a number) or its site_id (a string).",
        "unknown": "Unknown site {reference!r}.",
    }

    def __init__(self, *, scope_action: str = "change", **kwargs):
        self.scope_action = scope_action
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        request = self.context.get("request")
        site = site_for_reference(
            user=getattr(request, "user", None), reference=data, action=self.scope_action
        )
        if site is None:
            self.fail("unknown", reference=data)
        return site

    def to_representation(self, value):
        return value.pk


class SiteReferenceFieldSchema(OpenApiSerializerFieldExtension):
    target_class = SiteReferenceField

    def map_serializer_field(self, auto_schema, direction):
        if direction == "response":
            return build_basic_type(OpenApiTypes.INT)
        return {"oneOf": [build_basic_type(OpenApiTypes.INT), build_basic_type(OpenApiTypes.STR)]}
