import math

from django.utils import timezone
from rest_framework import serializers

from devices_app.models import Device
from devices_app.selectors import DEVICE_PAGE_COLUMNS
from devices_app.validators import normalize_mac
from homepot.api.fields import StrictCharField, iso_datetime
from homepot.api.serializers import StrictModelSerializer
from sites_app.api.fields import SiteReferenceField


def _check_json_value(value) -> None:
    """Refuse what PostgreSQL's jsonb cannot store (NUL characters, lone surrogates,
    NaN/Infinity); walked without recursion, so depth is no risk."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(ch) <= 0xDFFF for ch in item):
                raise serializers.ValidationError(
                    "Text in config may not contain NUL or unpaired surrogates."
                )
        elif isinstance(item, float) and not math.isfinite(item):
            raise serializers.ValidationError("Numbers in config must be finite.")


# The device's own attributes of a list row (devices_app.selectors.DEVICE_PAGE_COLUMNS less the
# site, which to_representation takes from the related object).
_ROW_DEVICE_COLUMNS = tuple(name for name in DEVICE_PAGE_COLUMNS if not name.startswith("site"))


def device_row_representation(row: dict, zone) -> dict:
    """DeviceSerializer's answer for one row of devices_app.selectors.device_page_rows (the
    list) or of a device's attributes (the detail); `zone` is the current time zone."""
    if "last_seen_utc_text" in row:
        # A row of device_page_rows(times_as_utc_text=True) carries the text already written.
        last_seen, created_at, updated_at = (
            row["last_seen_utc_text"],
            row["created_at_utc_text"],
            row["updated_at_utc_text"],
        )
    else:
        last_seen, created_at, updated_at = (
            iso_datetime(row["last_seen"], zone),
            iso_datetime(row["created_at"], zone),
            iso_datetime(row["updated_at"], zone),
        )
    ip_address, mac_address = row["ip_address"], row["mac_address"]
    return {
        "id": row["id"],
        "device_id": row["device_id"],
        "name": row["name"],
        "device_type": row["device_type"],
        "site_id": row["site_id"],
        "site": row["site__site_id"],
        "site_name": row["site__name"],
        "status": row["status"],
        # As text (psycopg reads inet as text already): written inline, 100 values a page.
        "ip_address": ip_address if ip_address is None or type(ip_address) is str else str(ip_address),
        "mac_address": mac_address if mac_address is None or type(mac_address) is str else str(mac_address),
        "firmware_version": row["firmware_version"],
        "config": row["config"],
        "push_channel": row["push_channel"],
        "last_seen": last_seen,
        "created_at": created_at,
        "updated_at": updated_at,
    }


class DeviceCredentialSerializer(serializers.Serializer):
    """A device's credential, as issued: the secret appears here once and never again."""

    device_id = serializers.CharField(read_only=True)
    key_prefix = serializers.CharField(read_only=True)
    credential = serializers.CharField(
        read_only=True, help_text="Send as `Authorization: Device <credential>`. Shown only now."
    )
    created_at = serializers.DateTimeField(read_only=True)


class RegisteredDeviceSerializer(serializers.Serializer):
    credential = serializers.CharField(
        read_only=True,
        help_text="Only in the answer to POST: the device's credential, shown once "
        "(send as `Authorization: Device <credential>`).",
    )


class DeviceSerializer(StrictModelSerializer):
    """A device as the API shows and accepts it.

    `site_id` is the site's internal id (the guide's spelling); `site` and `site_name` are
    read-only conveniences. MAC addresses are accepted in the common spellings and stored
    and shown as 00:1B:44:11:3A:B9.
    """

    site_id = SiteReferenceField(
        source="site", help_text="The site: its internal id (3) or business id (site-003)."
    )
    site = serializers.CharField(source="site.site_id", read_only=True, help_text="The site's business id.")
    site_name = serializers.CharField(source="site.name", read_only=True)
    ip_address = serializers.IPAddressField(required=False, allow_null=True, allow_blank=True)
    mac_address = StrictCharField(
        required=False,
        allow_null=True,
        allow_blank=True,
        max_length=32,
        help_text="00:1B:44:11:3A:B9, 00-1B-44-11-3A-B9, 001b.4411.3ab9 or 001B44113AB9.",
    )
    config = serializers.JSONField(required=False, help_text="A JSON object of device settings.")

    class Meta:
        model = Device
        fields = [
            "id",
            "device_id",
            "name",
            "device_type",
            "site_id",
            "site",
            "site_name",
            "status",
            "ip_address",
            "mac_address",
            "firmware_version",
            "config",
            "push_channel",
            "last_seen",
            "created_at",
            "updated_at",
        ]
        # last_seen is reported by the device itself (agent API), not set by operators.
        read_only_fields = ["id", "last_seen", "created_at", "updated_at"]

    def to_representation(self, device):
        """What DRF's field-by-field loop answers (a test compares the two for every kind of
        value), written out: a page of the device list is 50 of these, and the generic loop
        (an attribute lookup, a None check and a field call per column) was most of the
        page's time in the profile (docs/performance.md)."""
        site = device.site
        row = {name: getattr(device, name) for name in _ROW_DEVICE_COLUMNS}
        row.update(site_id=site.pk, site__site_id=site.site_id, site__name=site.name)
        return device_row_representation(row, timezone.get_current_timezone())

    def validate_ip_address(self, value):
        return value or None

    def validate_mac_address(self, value):
        if not value:
            return None
        mac = normalize_mac(value)
        others = Device.objects.filter(mac_address=mac)
        if self.instance is not None:
            others = others.exclude(pk=self.instance.pk)
        if others.exists():
            raise serializers.ValidationError("Another device already has this MAC address.", code="unique")
        return mac

    def validate_config(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError('Must be a JSON object, e.g. {"gateway_url": "..."}.')
        _check_json_value(value)
        return value


class ImportRowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="The line of the file (the header is line 1).")
    device_id = serializers.CharField()
    field = serializers.CharField(help_text="The column at fault (`file` for the row as a whole).")
    message = serializers.CharField()


class ImportOutcomeSerializer(serializers.Serializer):
    row = serializers.IntegerField()
    device_id = serializers.CharField()
    # Not a ChoiceField: the schema has other `action` enums (jobs), and these three words
    # need no enum component of their own.
    action = serializers.CharField(help_text="create, update or skip.")
    fields = serializers.ListField(child=serializers.CharField(), help_text="The fields that change.")


class DeviceImportSerializer(serializers.Serializer):
    """What an import does (dry run) or did (applied)."""

    rows = serializers.IntegerField()
    create = serializers.IntegerField()
    update = serializers.IntegerField()
    skip = serializers.IntegerField()
    error_count = serializers.IntegerField()
    errors = ImportRowErrorSerializer(many=True)
    errors_truncated = serializers.BooleanField()
    outcomes = ImportOutcomeSerializer(many=True, help_text="The first 200 rows' outcomes.")
    applied = serializers.BooleanField()
