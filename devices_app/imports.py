"""CSV import of devices: a preview (what would be created, updated, skipped, and every row's
errors, naming the field and the reason), then an all-or-nothing, set-based apply.

Why hand-written and not django-import-export: the library resolves and saves rows one model
instance at a time (a SELECT and a save per row, plus its own result objects); 100,000 devices
must import in well under a minute, and the admin's confirm step must not re-run a per-row ORM
pipeline. Here rows are validated in Python against lookups made in batches (one query per
BATCH rows for existing devices and MAC owners, one for the caller's sites), and written with
COPY into a temporary table and ONE `INSERT ... ON CONFLICT (device_id) DO UPDATE`. Scope,
validation and the audit are HOMEPOT's own, shared by the API and the admin.

The file is what `GET /devices/export` produces (read-only columns are ignored), so an
export, edited in a spreadsheet, imports back. Devices created by an import have no
credential yet: issue one per device (admin "Rotate credentials", or POST
/devices/<id>/credential) before they call the agent API.
"""

from __future__ import annotations

import ipaddress

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection

from accounts.scoping import scoped_site_ids
from devices_app import identity_store
from devices_app.choices import DeviceType, PushChannel
from devices_app.models import Device
from devices_app.selectors import DEVICE_EXPORT_COLUMNS
from devices_app.validators import normalize_mac
from homepot.csv_import import ImportPreview, ImportRefused, batches, read_table, unguard
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic
from sites_app.models import Site
from sites_app.validators import business_id_validator

__all__ = ["ImportPreview", "ImportRefused", "devices_import", "device_import_preview"]

BATCH = 5000

REQUIRED = ("device_id", "name", "site_id")
WRITABLE = (
    "device_id",
    "name",
    "device_type",
    "site_id",
    "ip_address",
    "mac_address",
    "firmware_version",
    "push_channel",
)
# What the export adds and the import ignores: the device reports these itself.
READ_ONLY = tuple(column for column in DEVICE_EXPORT_COLUMNS if column not in WRITABLE)
COMPARED = ("name", "device_type", "site", "ip_address", "mac_address", "firmware_version", "push_channel")


def _check(
    line: int, raw: dict, header: list[str], preview: ImportPreview, allowed_sites: dict
) -> dict | None:
    """One row's values, cleaned, or None after recording its errors."""
    values = {name: unguard(raw.get(name) or "") for name in header if name in WRITABLE}
    device_id = values["device_id"]
    before = preview.error_count
    if None in raw:  # more cells than the header names
        preview.error(line, device_id, "file", "The row has more cells than the header.")
    try:
        business_id_validator(device_id)
        if len(device_id) > 64:
            raise ValidationError("At most 64 characters.")
    except ValidationError as exc:
        preview.error(line, device_id, "device_id", " ".join(exc.messages))
    if not values["name"]:
        preview.error(line, device_id, "name", "This field is required.")
    elif len(values["name"]) > 200:
        preview.error(line, device_id, "name", "At most 200 characters.")
    site_ref = values["site_id"]
    if site_ref not in allowed_sites:
        preview.error(line, device_id, "site_id", f"No site {site_ref!r} that you may change.")
    if "device_type" in values:
        values["device_type"] = values["device_type"] or DeviceType.POS_TERMINAL
        if values["device_type"] not in DeviceType.values:
            preview.error(line, device_id, "device_type", f"Choose one of {', '.join(DeviceType.values)}.")
    if "push_channel" in values:
        values["push_channel"] = values["push_channel"] or PushChannel.POLL
        if values["push_channel"] not in PushChannel.values:
            preview.error(line, device_id, "push_channel", f"Choose one of {', '.join(PushChannel.values)}.")
    if values.get("ip_address"):
        try:
            values["ip_address"] = str(ipaddress.ip_address(values["ip_address"]))
        except ValueError:
            preview.error(line, device_id, "ip_address", "Enter a valid IPv4 or IPv6 address.")
    elif "ip_address" in values:
        values["ip_address"] = None
    if values.get("mac_address"):
        try:
            values["mac_address"] = normalize_mac(values["mac_address"])
        except ValidationError as exc:
            preview.error(line, device_id, "mac_address", " ".join(exc.messages))
    elif "mac_address" in values:
        values["mac_address"] = None
    if len(values.get("firmware_version", "")) > 64:
        preview.error(line, device_id, "firmware_version", "At most 64 characters.")
    if preview.error_count > before:
        return None
    values["site"] = allowed_sites[site_ref]
    del values["site_id"]
    return values


def device_import_preview(*, actor, data: str | bytes, lock: bool = False) -> ImportPreview:
    """What importing `data` would do, row by row; writes nothing. A manager may name only
    sites they may change, and update only devices of those sites (anything else is a row
    error). `lock`: lock the devices the file names (FOR UPDATE) until the transaction ends,
    so what is applied is what was compared. Raises ValidationError for an unreadable file."""
    header, raw_rows = read_table(data, required=REQUIRED, writable=WRITABLE, read_only=READ_ONLY)
    preview = ImportPreview()
    scope = scoped_site_ids(actor, "change") if actor is not None else None
    sites = Site.objects.all() if scope is None else Site.objects.filter(pk__in=scope)
    allowed = dict(sites.values_list("site_id", "pk"))
    site_names = {pk: site_id for site_id, pk in allowed.items()}

    seen_ids: dict[str, int] = {}
    seen_macs: dict[str, int] = {}
    # The rows are read BATCH at a time (homepot.csv_import.batches): the file's rows are
    # never all parsed at once.
    for batch in batches(raw_rows, BATCH):
        chunk = []
        for raw in batch:
            preview.rows += 1
            line = preview.rows + 1  # the header is line 1
            values = _check(line, raw, header, preview, allowed)
            if values is None:
                continue
            device_id, mac = values["device_id"], values.get("mac_address")
            if device_id in seen_ids:
                preview.error(
                    line, device_id, "device_id", f"Duplicate of row {seen_ids[device_id]} in this file."
                )
                continue
            seen_ids[device_id] = line
            if mac:
                if mac in seen_macs:
                    preview.error(
                        line, device_id, "mac_address", f"Same MAC address as row {seen_macs[mac]}."
                    )
                    continue
                seen_macs[mac] = line
            chunk.append((line, values))
        _compare_batch(chunk, preview, site_names, actor, lock)
    return preview


def _compare_batch(
    chunk: list[tuple[int, dict]], preview: ImportPreview, site_names: dict, actor, lock
) -> None:
    named = Device.objects.filter(device_id__in=[values["device_id"] for _, values in chunk])
    if lock:
        # In id order within the batch, as every writer that locks many device rows.
        named = named.select_for_update(of=("self",)).order_by("pk")
    existing = {
        row["device_id"]: row
        for row in named.values("device_id", "site_id", *[name for name in COMPARED if name != "site"])
    }
    macs = [values["mac_address"] for _, values in chunk if values.get("mac_address")]
    mac_owner = dict(Device.objects.filter(mac_address__in=macs).values_list("mac_address", "device_id"))
    for line, values in chunk:
        device_id = values["device_id"]
        current = existing.get(device_id)
        mac = values.get("mac_address")
        if mac and mac_owner.get(mac, device_id) != device_id:
            preview.error(line, device_id, "mac_address", "Another device already has this MAC address.")
            continue
        if current is not None and actor is not None and current["site_id"] not in site_names:
            # Its current site is not the caller's: the same answer as a taken id (no detail).
            preview.error(
                line, device_id, "device_id", "This device ID belongs to a device you may not change."
            )
            continue
        full = {
            "device_type": DeviceType.POS_TERMINAL,
            "ip_address": None,
            "mac_address": None,
            "firmware_version": "",
            "push_channel": PushChannel.POLL,
        }
        if current is not None:
            full.update({name: current[name] for name in COMPARED if name != "site"})
            full["ip_address"] = str(current["ip_address"]) if current["ip_address"] else None
        full.update(values)
        if current is None:
            action, changed = "create", list(values)
            preview.create += 1
        else:
            before = {**current, "site": current["site_id"]}
            changed = [name for name in COMPARED if full[name] != before[name]]
            action = "update" if changed else "skip"
            if changed:
                preview.update += 1
            else:
                preview.skip += 1
        preview.outcome(line, device_id, action, changed)
        if action != "skip":
            preview.writes.append(
                (
                    device_id,
                    full["name"],
                    full["device_type"],
                    full["site"],
                    full["ip_address"],
                    full["mac_address"],
                    full["firmware_version"],
                    full["push_channel"],
                )
            )
            preview.sites.add(site_names.get(full["site"], ""))


@audited_atomic()
def devices_import(*, actor, data: str | bytes, dry_run: bool = True) -> ImportPreview:
    """Preview `data` and, unless `dry_run`, apply it: every row or none. Creates and updates
    devices in one set-based statement and appends ONE `devices.imported` audit row with the
    counts. Raises ImportRefused (nothing written) if any row has an error; ValidationError
    for an unreadable file; PermissionDenied for a user who may not change devices.

    Repeatable: importing the same file again skips every row and writes nothing (it still
    records an audit row, with zero changes)."""
    if actor is not None and not (
        actor.has_perm("devices_app.add_device") and actor.has_perm("devices_app.change_device")
    ):
        raise PermissionDenied("You may not import devices.")
    preview = device_import_preview(actor=actor, data=data, lock=not dry_run)
    if preview.error_count:
        raise ImportRefused(preview)
    if dry_run:
        return preview
    if preview.writes:
        _write(preview.writes)
    only_site = None
    if len(preview.sites) == 1:
        only_site = Site.objects.filter(site_id=next(iter(preview.sites))).first()
    audit_record(
        event_type=AuditEvent.DEVICES_IMPORTED,
        actor=actor,
        site=only_site,
        description=f"CSV import: {preview.create} devices created, {preview.update} updated, "
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


def _write(rows: list[tuple]) -> None:
    """COPY the rows into a temporary table, then one upsert: new devices are inserted, known
    ones get the file's values (updated_at stamped). On PostgreSQL only."""
    table = connection.ops.quote_name(Device._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TEMPORARY TABLE device_import (device_id text, name text, device_type text, "
            "site_id bigint, ip_address inet, mac_address text, firmware_version text, push_channel text) "
            "ON COMMIT DROP"
        )
        with cursor.cursor.copy(
            "COPY device_import (device_id, name, device_type, site_id, ip_address, mac_address, "
            "firmware_version, push_channel) FROM STDIN"
        ) as copy:
            for row in rows:
                copy.write_row(row)
        # The table name is the model's, never input.
        cursor.execute(
            f"""
            INSERT INTO {table} (device_id, name, device_type, site_id, status, ip_address, mac_address,
                firmware_version, push_channel, config, health_status, app_version, created_at, updated_at)
            SELECT device_id, name, device_type, site_id, 'unknown', ip_address, mac_address,
                firmware_version, push_channel, '{{}}'::jsonb, '', '', now(), now()
            FROM device_import
            ON CONFLICT (device_id) DO UPDATE SET
                name = EXCLUDED.name, device_type = EXCLUDED.device_type, site_id = EXCLUDED.site_id,
                ip_address = EXCLUDED.ip_address, mac_address = EXCLUDED.mac_address,
                firmware_version = EXCLUDED.firmware_version, push_channel = EXCLUDED.push_channel,
                updated_at = now()
            RETURNING id
            """  # noqa: S608
        )
        # Site and type are read by the ingest from Redis (devices_app.identity_store).
        identity_store.forget_devices_on_commit(device_pk for (device_pk,) in cursor.fetchall())
        cursor.execute("DROP TABLE device_import")
