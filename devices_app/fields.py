from django.core.exceptions import ValidationError
from django.db import models

from devices_app.validators import normalize_mac, validate_mac


class MACAddressField(models.CharField):
    """A MAC address stored in one canonical form: upper-case, colon-separated octets."""

    default_validators = [validate_mac]

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("max_length", 17)
        super().__init__(*args, **kwargs)

    def deconstruct(self):
        name, path, args, kwargs = super().deconstruct()
        if kwargs.get("max_length") == 17:
            del kwargs["max_length"]
        return name, path, args, kwargs

    def to_python(self, value):
        value = super().to_python(value)
        if value in (None, ""):
            return None if self.null else ""
        try:
            return normalize_mac(value)
        except ValidationError:
            return value  # left as given so validation reports it

    def get_prep_value(self, value):
        return self.to_python(super().get_prep_value(value))
