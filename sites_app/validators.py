import zoneinfo

from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator

business_id_validator = RegexValidator(
    regex=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
    message="Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
    code="invalid_business_id",
)


def validate_timezone(value: str) -> None:
    if value not in zoneinfo.available_timezones():
        raise ValidationError(
            "Unknown time zone %(value)s; use an IANA name such as Europe/London.",
            code="invalid_timezone",
            params={"value": value},
        )
