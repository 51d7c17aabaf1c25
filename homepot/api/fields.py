"""Serializer fields that take JSON types at their word.

DRF's stock fields coerce: `CharField` turns `42` into `"42"` and `BooleanField` reads
`"yes"` as true. For an API that terminals and integrations script against, a wrong
type is a client bug worth reporting (400 naming the field) rather than guessing.
"""

from rest_framework import serializers


class StrictCharField(serializers.CharField):
    """A JSON string, and nothing else (numbers, lists and objects are refused)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """JSON `true` or `false` only."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data
