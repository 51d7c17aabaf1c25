"""The base serializer of the HOMEPOT API."""

import copy

from django.db import models
from rest_framework import serializers

from homepot.api.fields import StrictBooleanField, StrictCharField


class StrictModelSerializer(serializers.ModelSerializer):
    """A ModelSerializer whose text and boolean fields refuse values of the wrong JSON type."""

    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.TextField: StrictCharField,
        models.BooleanField: StrictBooleanField,
    }


class PrebuiltFieldsMixin:
    """Builds a serializer class's fields once per process instead of once per instance.

    DRF deep-copies every declared field (re-running its `__init__`) and, for a
    ModelSerializer, maps every model field again, each time a serializer is made: about a
    third of a job creation's Python time (docs/performance.md). Here the class keeps the
    unbound fields it built the first time and each instance binds shallow copies of them.
    A field holding another field (a list's child, a nested serializer) is still deep-copied:
    its child is bound to its parent and reaches the request through it.

    Only for serializers whose fields do not depend on the instance, data or context.
    """

    def get_fields(self):
        cls = type(self)
        prebuilt = cls.__dict__.get("_prebuilt_fields")
        if prebuilt is None:
            prebuilt = super().get_fields()
            cls._prebuilt_fields = prebuilt
        return {name: _fresh_copy(field) for name, field in prebuilt.items()}


def _fresh_copy(field):
    if isinstance(field, (serializers.ListField, serializers.DictField)) and not isinstance(
        field.child, serializers.BaseSerializer
    ):
        # A list or dict of plain values: a copy of it holding a copy of its child, the
        # child's parent pointed at the copy (the state ListField.__init__'s bind leaves),
        # rather than deepcopy re-running both constructors.
        fresh = _shallow(field)
        fresh.child = _fresh_copy(field.child)
        fresh.child.parent = fresh
        return fresh
    if (
        isinstance(field, serializers.BaseSerializer)
        or hasattr(field, "child")
        or hasattr(field, "child_relation")
    ):
        return copy.deepcopy(field)
    return _shallow(field)


def _shallow(field):
    # What copy.copy does for a field (a new instance sharing the same attribute values),
    # without its __reduce_ex__ round trip, which cost three times as much per field.
    fresh = object.__new__(type(field))
    fresh.__dict__.update(field.__dict__)
    return fresh
