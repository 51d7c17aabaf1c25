from django.db import models

from accounts.scoping import ScopedQuerySet
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.fields import MACAddressField
from sites_app.validators import business_id_validator


class DeviceQuerySet(ScopedQuerySet):
    scope_path = "site"

    def online(self):
        return self.filter(status=DeviceStatus.ONLINE)


class Device(models.Model):
    """A terminal, reader, printer or other device at a site."""

    device_id = models.CharField(
        "device ID",
        max_length=64,
        unique=True,
        validators=[business_id_validator],
        help_text="Business identifier, unique across the fleet, e.g. pos-terminal-009.",
    )
    name = models.CharField(max_length=200)
    device_type = models.CharField(max_length=32, choices=DeviceType.choices, default=DeviceType.POS_TERMINAL)
    # PROTECT: a site with devices is closed by moving or retiring them first, never by
    # silently deleting a store's terminals along with it.
    site = models.ForeignKey("sites_app.Site", on_delete=models.PROTECT, related_name="devices")
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN)
    ip_address = models.GenericIPAddressField("IP address", null=True, blank=True)
    mac_address = MACAddressField(
        "MAC address", null=True, blank=True, help_text="Stored as 00:1B:44:11:3A:B9."
    )
    firmware_version = models.CharField(max_length=64, blank=True)
    config = models.JSONField(default=dict, blank=True)
    last_seen = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        ordering = ["device_id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(device_type__in=DeviceType.values), name="devices_device_type_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=DeviceStatus.values), name="devices_status_valid"
            ),
            models.UniqueConstraint(
                fields=["mac_address"],
                condition=models.Q(mac_address__isnull=False),
                name="devices_mac_address_unique",
                violation_error_message="Another device already has this MAC address.",
            ),
        ]
        # Each list filter has an index; the trailing id serves the cursor pagination order.
        indexes = [
            models.Index(fields=["site", "device_type", "id"], name="devices_site_type"),
            models.Index(fields=["site", "status", "id"], name="devices_site_status"),
            models.Index(fields=["status", "id"], name="devices_status"),
            models.Index(fields=["device_type", "id"], name="devices_type"),
            models.Index(fields=["last_seen"], name="devices_last_seen"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.device_id})"
