import re

from django.core.exceptions import ValidationError

_MAC_SEPARATED = re.compile(
    r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$"  # 00:1B:44:11:3A:B9 or with '-'
    r"|^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$"  # 001b.4411.3ab9 (Cisco style)
    r"|^[0-9A-Fa-f]{12}$"
)


def normalize_mac(value: str) -> str:
    """Return `value` as upper-case colon-separated octets (00:1B:44:11:3A:B9).

    Accepts the common spellings (colons, dashes, Cisco dots, bare hex); raises
    ValidationError for anything else.
    """
    if not isinstance(value, str) or not _MAC_SEPARATED.match(value.strip()):
        raise ValidationError(
            "Enter a valid MAC address, e.g. 00:1B:44:11:3A:B9.", code="invalid_mac_address"
        )
    digits = re.sub(r"[^0-9A-Fa-f]", "", value).upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def validate_mac(value: str) -> None:
    normalize_mac(value)
