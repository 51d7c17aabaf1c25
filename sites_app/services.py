"""Writes of the sites app. Every change is validated, scoped and audited in one transaction."""

from django.core.exceptions import ValidationError

from accounts.scoping import require_admin, require_site_access
from homepot.errors import Conflict
from monitoring_app.choices import AuditEvent
from monitoring_app.services import (
    audit_record,
    audited_atomic,
    changes,
    lock_for_change,
    snapshot,
    update_audited,
)
from sites_app.models import BlackoutPeriod, MaintenanceWindow, Site

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


# Bounds on one site's schedule: four windows a day is plenty, and the next-opening search
# (sites_app/windows.py) looks past each blackout.
MAX_WINDOWS_PER_SITE = 28
MAX_BLACKOUTS_PER_SITE = 100


def clock_text(value) -> str:
    """A local time as "02:00" (or "02:00:30" when it has seconds)."""
    return value.isoformat("minutes" if not (value.second or value.microsecond) else "auto")


def _schedule(windows, blackouts) -> dict:
    return {
        "maintenance_windows": [
            {"weekday": w.weekday, "starts": clock_text(w.starts), "ends": clock_text(w.ends)}
            for w in sorted(windows, key=lambda w: (w.weekday, w.starts))
        ],
        "blackouts": [
            {"starts_on": b.starts_on.isoformat(), "ends_on": b.ends_on.isoformat(), "reason": b.reason}
            for b in sorted(blackouts, key=lambda b: (b.starts_on, b.ends_on, b.reason))
        ],
    }


def maintenance_snapshot(site: Site) -> dict:
    """The site's schedule as the audit trail shows it (local times, ISO dates)."""
    return _schedule(site.maintenance_windows.all(), site.blackouts.all())


def _clean_rows(rows: list, field: str, limit: int) -> None:
    """full_clean each new row; errors are named `<field>.<index>.<column>` like the API's."""
    if len(rows) > limit:
        raise ValidationError({field: f"At most {limit} per site."}, code="too_many")
    errors = {}
    for index, row in enumerate(rows):
        try:
            row.full_clean(exclude=["site"], validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            for column, messages in exc.message_dict.items():
                errors[f"{field}.{index}.{column}"] = messages
    if errors:
        raise ValidationError(errors)


def _refuse_duplicate_windows(windows: list[MaintenanceWindow]) -> None:
    seen = {}
    for index, window in enumerate(windows):
        key = (window.weekday, window.starts)
        if key in seen:
            raise ValidationError(
                {f"maintenance_windows.{index}.starts": f"Same day and start as window {seen[key]}."},
                code="duplicate_window",
            )
        seen[key] = index


@audited_atomic()
def site_maintenance_set(
    *, actor, site: Site, maintenance_windows: list[dict], blackouts: list[dict]
) -> Site:
    """Replace the site's weekly maintenance windows and blackout dates with the given ones
    (each a dict of the model's fields). Administrators and the site's managers may. Audited
    as site.updated with the old and new schedule; a repeat with the same schedule changes
    and records nothing. Running jobs that keep to windows see the change at their next pass
    (at most HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS later)."""
    site = lock_for_change(Site, site.pk)
    require_site_access(actor, site, "change")
    windows = [MaintenanceWindow(site=site, **fields) for fields in maintenance_windows]
    periods = [BlackoutPeriod(site=site, **fields) for fields in blackouts]
    _clean_rows(windows, "maintenance_windows", MAX_WINDOWS_PER_SITE)
    _clean_rows(periods, "blackouts", MAX_BLACKOUTS_PER_SITE)
    _refuse_duplicate_windows(windows)
    old, new = changes(maintenance_snapshot(site), _schedule(windows, periods))
    if not new:
        return site
    site.maintenance_windows.all().delete()
    site.blackouts.all().delete()
    MaintenanceWindow.objects.bulk_create(windows)
    BlackoutPeriod.objects.bulk_create(periods)
    audit_record(
        event_type=AuditEvent.SITE_UPDATED,
        actor=actor,
        site=site,
        description=f"Site {site.site_id} maintenance schedule updated: {', '.join(new)}",
        old_values=old,
        new_values=new,
    )
    return site
