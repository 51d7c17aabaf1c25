"""Serializer fields that take JSON types at their word.

DRF's stock fields coerce: `CharField` turns `42` into `"42"` and `BooleanField` reads
`"yes"` as true. For an API that terminals and integrations script against, a wrong
type is a client bug worth reporting (400 naming the field) rather than guessing.
"""

from django.utils import timezone
from rest_framework import serializers


def iso_datetime(value, zone=None):
    """What DRF's DateTimeField renders, without a field: ISO 8601 in the current time zone
    (`zone`, when the caller has already asked for it), UTC written `Z`; None for no value.
    For answers built directly on hot paths (the device list's rows, the timelines, the
    heartbeat), whose tests hold them equal to the serializers'."""
    if not value:
        return None
    text = value.astimezone(zone or timezone.get_current_timezone()).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


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
