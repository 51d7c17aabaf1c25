"""CSV import of sites (administrators only): the same preview, row errors and all-or-nothing
apply as the device import (homepot/csv_import.py). A chain has hundreds or thousands of sites,
so the write is one ORM `bulk_create(update_conflicts=True)` (INSERT ... ON CONFLICT (site_id)
DO UPDATE), in batches, after every row was validated."""

from __future__ import annotations

from accounts.scoping import require_admin
from homepot.csv_import import ImportPreview, ImportRefused, read_table, unguard
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic
from sites_app.models import Site
from sites_app.selectors import SITE_EXPORT_COLUMNS
from sites_app.validators import business_id_validator, validate_timezone

__all__ = ["ImportPreview", "ImportRefused", "sites_import"]

REQUIRED = ("site_id", "name")
WRITABLE = ("site_id", "name", "description", "location", "region", "timezone", "is_active")
READ_ONLY = tuple(column for column in SITE_EXPORT_COLUMNS if column not in WRITABLE)
COMPARED = ("name", "description", "location", "region", "timezone", "is_active")
LENGTHS = {"site_id": 64, "name": 200, "location": 255, "region": 100, "timezone": 64}
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
BATCH = 2000


def _check(line: int, raw: dict, header: list[str], preview: ImportPreview) -> dict | None:
    values = {name: unguard(raw.get(name) or "") for name in header if name in WRITABLE}
    site_id, before = values["site_id"], preview.error_count
    if None in raw:
        preview.error(line, site_id, "file", "The row has more cells than the header.")
    try:
        business_id_validator(site_id)
    except Exception as exc:  # django ValidationError
        preview.error(line, site_id, "site_id", " ".join(getattr(exc, "messages", [str(exc)])))
    if not values["name"]:
        preview.error(line, site_id, "name", "This field is required.")
    for name, most in LENGTHS.items():
        if len(values.get(name, "")) > most:
            preview.error(line, site_id, name, f"At most {most} characters.")
    if "timezone" in values:
        values["timezone"] = values["timezone"] or "UTC"
        try:
            validate_timezone(values["timezone"])
        except Exception:  # django ValidationError
            preview.error(
                line, site_id, "timezone", "Unknown time zone; use an IANA name such as Europe/London."
            )
    if "is_active" in values:
        text = values["is_active"].lower()
        if text in ("", *_TRUE):
            values["is_active"] = True
        elif text in _FALSE:
            values["is_active"] = False
        else:
            preview.error(line, site_id, "is_active", "Use true or false.")
    return None if preview.error_count > before else values


def site_import_preview(*, data: str | bytes, lock: bool = False) -> ImportPreview:
    """What importing `data` would do; writes nothing (`lock`: lock the named sites)."""
    header, raw_rows = read_table(data, required=REQUIRED, writable=WRITABLE, read_only=READ_ONLY)
    preview = ImportPreview(id_key="site_id")
    seen: dict[str, int] = {}
    checked = []
    for raw in raw_rows:
        preview.rows += 1
        line = preview.rows + 1  # the header is line 1
        values = _check(line, raw, header, preview)
        if values is None:
            continue
        if values["site_id"] in seen:
            preview.error(
                line,
                values["site_id"],
                "site_id",
                f"Duplicate of row {seen[values['site_id']]} in this file.",
            )
            continue
        seen[values["site_id"]] = line
        checked.append((line, values))
    for start in range(0, len(checked), BATCH):
        chunk = checked[start : start + BATCH]
        named = Site.objects.filter(site_id__in=[values["site_id"] for _, values in chunk])
        if lock:
            named = named.select_for_update().order_by("pk")  # id order: see docs/architecture.md
        existing = {row["site_id"]: row for row in named.values("site_id", *COMPARED)}
        for line, values in chunk:
            current = existing.get(values["site_id"])
            full = {"description": "", "location": "", "region": "", "timezone": "UTC", "is_active": True}
            if current is not None:
                full.update({name: current[name] for name in COMPARED})
            full.update(values)
            if current is None:
                action, changed = "create", list(values)
                preview.create += 1
            else:
                changed = [name for name in COMPARED if full[name] != current[name]]
                action = "update" if changed else "skip"
                preview.update += bool(changed)
                preview.skip += not changed
            preview.outcome(line, values["site_id"], action, changed)
            if action != "skip":
                preview.writes.append(tuple(full[name] for name in WRITABLE))
    return preview


@audited_atomic()
def sites_import(*, actor, data: str | bytes, dry_run: bool = True) -> ImportPreview:
    """Preview `data` and, unless `dry_run`, apply it: every row or none, then ONE
    `sites.imported` audit row with the counts. Administrators only (PermissionDenied).
    Raises ImportRefused (nothing written) on any row error, ValidationError for an unreadable
    file. Importing the same file again changes nothing."""
    require_admin(actor, "import sites")
    preview = site_import_preview(data=data, lock=not dry_run)
    if preview.error_count:
        raise ImportRefused(preview)
    if dry_run:
        return preview
    sites = [Site(**dict(zip(WRITABLE, row, strict=True))) for row in preview.writes]
    Site.objects.bulk_create(
        sites,
        batch_size=BATCH,
        update_conflicts=True,
        unique_fields=["site_id"],
        update_fields=[*COMPARED, "updated_at"],
    )
    audit_record(
        event_type=AuditEvent.SITES_IMPORTED,
        actor=actor,
        description=f"CSV import: {preview.create} sites created, {preview.update} updated, "
        f"{preview.skip} unchanged",
        new_values={
            "rows": preview.rows,
            "created": preview.create,
            "updated": preview.update,
            "skipped": preview.skip,
        },
    )
    preview.applied = True
    return preview
