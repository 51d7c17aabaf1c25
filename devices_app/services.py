"""Writes of the devices app. Every change is validated, scoped and audited in one transaction."""

from django.db import transaction

from accounts.scoping import require_site_access
from devices_app.models import Device
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, changes, snapshot
from sites_app.models import Site

AUDITED_FIELDS = (
    "device_id",
    "name",
    "device_type",
    "site",
    "status",
    "ip_address",
    "mac_address",
    "firmware_version",
    "config",
)


@transaction.atomic
def device_create(*, actor, site: Site, device_id: str, name: str, **fields) -> Device:
    """Register a device at `site` (the actor must be allowed to change that site).

    Audited as device.created. Raises ValidationError for bad or duplicate values.
    """
    require_site_access(actor, site, "change")
    device = Device(site=site, device_id=device_id, name=name, **fields)
    device.full_clean()
    device.save()
    audit_record(
        event_type=AuditEvent.DEVICE_CREATED,
        actor=actor,
        device=device,
        description=f"Device {device.device_id} registered at {site.site_id}",
        new_values=snapshot(device, AUDITED_FIELDS),
    )
    return device


@transaction.atomic
def device_update(*, actor, device: Device, **fields) -> Device:
    """Change the given fields; moving to another site needs change rights on both sites.

    Audited as device.updated with only what changed; a repeat records nothing.
    """
    # The stored row decides the current site, not a caller's possibly edited instance.
    device = Device.objects.select_for_update().select_related("site").get(pk=device.pk)
    require_site_access(actor, device.site, "change")
    new_site = fields.get("site")
    if new_site is not None and new_site.pk != device.site_id:
        require_site_access(actor, new_site, "change")
    before = snapshot(device, AUDITED_FIELDS)
    for name, value in fields.items():
        setattr(device, name, value)
    device.full_clean()
    old, new = changes(before, snapshot(device, AUDITED_FIELDS))
    if new:
        device.save()
        audit_record(
            event_type=AuditEvent.DEVICE_UPDATED,
            actor=actor,
            device=device,
            description=f"Device {device.device_id} updated: {', '.join(new)}",
            old_values=old,
            new_values=new,
        )
    return device


@transaction.atomic
def device_delete(*, actor, device: Device) -> None:
    """Delete a device and its health history; audited as device.deleted (history kept)."""
    require_site_access(actor, device.site, "change")
    audit_record(
        event_type=AuditEvent.DEVICE_DELETED,
        actor=actor,
        device=device,
        description=f"Device {device.device_id} deleted from {device.site.site_id}",
        old_values=snapshot(device, AUDITED_FIELDS),
    )
    device.delete()
