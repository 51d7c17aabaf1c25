"""Writes of the sites app. Every change is validated, scoped and audited in one transaction."""

from accounts.scoping import require_admin
from homepot.errors import Conflict
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic, lock_for_change, snapshot, update_audited
from sites_app.models import Site

AUDITED_FIELDS = ("site_id", "name", "description", "location", "region", "timezone", "is_active")


@audited_atomic()
def site_create(*, actor, site_id: str, name: str, **fields) -> Site:
    """Create a site; only admins (or the system, `actor=None`) may. Audited as site.created.

    Raises ValidationError for bad or duplicate values. Not idempotent.
    """
    require_admin(actor, "create sites")
    site = Site(site_id=site_id, name=name, **fields)
    site.full_clean()
    site.save()
    audit_record(
        event_type=AuditEvent.SITE_CREATED,
        actor=actor,
        site=site,
        description=f"Site {site.site_id} created",
        new_values=snapshot(site, AUDITED_FIELDS),
    )
    return site


@audited_atomic()
def site_update(*, actor, site: Site, **fields) -> Site:
    """Change the given fields of `site`; only admins may (site managers run the site's
    devices and jobs, not the site record). Audited as site.updated with only what changed.

    A repeat with the same values changes nothing and records nothing.
    """
    require_admin(actor, "change sites")
    site = lock_for_change(Site, site.pk)
    update_audited(
        site,
        fields,
        audited_fields=AUDITED_FIELDS,
        event_type=AuditEvent.SITE_UPDATED,
        actor=actor,
        description=f"Site {site.site_id} updated",
        site=site,
    )
    return site


@audited_atomic()
def site_delete(*, actor, site: Site) -> None:
    """Delete a site with no devices (Conflict otherwise) and its jobs; audited as
    site.deleted. The audit history of the site is kept."""
    require_admin(actor, "delete sites")
    # The site row first; the delete then reaches its jobs and memberships (parent → child).
    site = lock_for_change(Site, site.pk)
    device_count = site.devices.count()
    if device_count:
        raise Conflict(
            f"Site {site.site_id} still has {device_count} device(s); move or delete them first, "
            "or mark the site inactive.",
            field="site_id",
            code="site_has_devices",
        )
    audit_record(
        event_type=AuditEvent.SITE_DELETED,
        actor=actor,
        site=site,
        description=f"Site {site.site_id} deleted",
        old_values=snapshot(site, AUDITED_FIELDS),
    )
    site.delete()
