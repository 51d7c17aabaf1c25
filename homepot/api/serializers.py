"""The base serializer of the HOMEPOT API."""

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
