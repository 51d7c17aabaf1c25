"""Import a chain's data from the older HOMEPOT's PostgreSQL database (`manage.py import_homepot`).

What is read is the older schema as docs/migrating-from-older-homepot.md lists it: the columns
the older database guide documents (sites, devices, users), and for jobs, health_checks and
audit_logs (whose columns the guide does not list) the columns of the older release; a column
that is absent is read as empty, so an older or trimmed database still imports.

How (docs/migrating-from-older-homepot.md has the why):
- The older database is opened read-only (`default_transaction_read_only = on`, one REPEATABLE
  READ READ ONLY transaction, so every table comes from the same snapshot) and streamed: small
  tables through a server-side cursor, health history through `COPY (SELECT ...) TO STDOUT`
  straight into a `COPY ... FROM STDIN` of a temporary table here. Rows are then checked and
  written set-based (`INSERT ... SELECT ... ON CONFLICT`), never one query per row.
- Idempotent: sites, devices and users are keyed by their business ids (site_id, device_id,
  username, case-insensitive); jobs and health checks by their `legacy_id` column (the old id),
  imported audit events by the old id in their hashed `new_values`. A second run updates what
  changed and adds what is new.
- Every row that cannot be taken is reported with its reason, and the rest goes on.
- The import is audited as one `legacy.imported` row per table (its counts); the older audit
  trail becomes `legacy.imported_event` rows appended to our hash chain.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from django.contrib.auth.validators import UnicodeUsernameValidator
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import connection, transaction
from django.utils import timezone
from psycopg.rows import dict_row
from tqdm import tqdm

from accounts.hashers import LegacyBcryptPasswordHasher, is_legacy_bcrypt_hash
from accounts.models import ApiToken, User
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.validators import normalize_mac
from homepot.db import stream
from jobs_app.choices import JobAction, JobPriority, JobStatus
from monitoring_app import partitions
from monitoring_app.choices import AuditEvent, HealthStatus
from monitoring_app.models import AuditLog
from monitoring_app.services import _canonical_ip, append_batch_to_chain, audit_record
from sites_app.validators import business_id_validator

BATCH_SIZE = 5000
# Per reason, how many ids of skipped health checks are named (the rest are counted).
HEALTH_SKIP_EXAMPLES = 20
TABLES = ("sites", "devices", "users", "jobs", "health_checks", "audit_logs")

# Older job statuses that were still in progress: the older system is switched off after
# the move, so these are not re-sent by themselves here (see _job_status).
_JOB_KEEP = {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
_JOB_UNFINISHED = {
    "queued",
    "sent",
    "acknowledged",
    "scheduled",
    "paused",
    "pending",
    "running",
    "in_progress",
}
_HEALTH_WORDS = {
    "healthy": HealthStatus.HEALTHY,
    "ok": HealthStatus.HEALTHY,
    "degraded": HealthStatus.DEGRADED,
    "warning": HealthStatus.DEGRADED,
    "unhealthy": HealthStatus.UNHEALTHY,
    "error": HealthStatus.UNHEALTHY,
    "critical": HealthStatus.UNHEALTHY,
}


class LegacyImportError(Exception):
    """The older database cannot be read as asked; the message says why."""


@dataclass
class TableReport:
    """What happened (or, in a dry run, would happen) to one table."""

    table: str
    read: int = 0
    created: int = 0
    updated: int = 0
    skipped: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    # (legacy id or business id, reason), every skipped row; for health checks the first
    # HEALTH_SKIP_EXAMPLES per reason (there may be millions).
    skipped_rows: list[tuple[str, str]] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    # (legacy id, what) of rows taken after removing NUL characters (see _without_nul); for
    # health checks the first HEALTH_SKIP_EXAMPLES.
    cleaned_rows: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def unchanged(self) -> int:
        return max(self.read - self.created - self.updated - self.skipped, 0)

    def cleaned(self, key: Any, what: str) -> None:
        self.notes[f"NUL characters (\\u0000) removed from {what}"] += 1
        self.cleaned_rows.append((str(key), what))

    def skip(self, key: Any, reason: str, kind: str | None = None) -> None:
        self.skipped += 1
        self.skip_reasons[kind or reason] += 1
        self.skipped_rows.append((str(key), reason))

    def counts(self) -> dict[str, int]:
        return {
            "read": self.read,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
        }


@dataclass
class ImportResult:
    dry_run: bool
    tables: dict[str, TableReport] = field(default_factory=dict)


class _DryRun(Exception):
    pass


def redact_url(url: str) -> str:
    """The URL without its password, for output."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "the older database"
    host, port = info.get("host", ""), info.get("port", 5432)
    return f"postgresql://{info.get('user', '')}@{host}:{port}/{info.get('dbname', '')}"


# --- The older database ----------------------------------------------------------------------


def open_legacy(url: str) -> psycopg.Connection:
    """A read-only connection to the older database, in one REPEATABLE READ READ ONLY
    transaction (one snapshot for every table), times in UTC."""
    try:
        conn = psycopg.connect(url, options="-c default_transaction_read_only=on", autocommit=True)
    except psycopg.Error as exc:
        raise LegacyImportError(f"Cannot connect to the older database: {exc}") from None
    conn.execute("SET default_transaction_read_only = on")
    conn.execute("SET TIME ZONE 'UTC'")
    conn.autocommit = False
    conn.read_only = True
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    return conn


class Legacy:
    """The older database: which of its tables and columns exist, and readers over them."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ANY(%s)",
            [list(TABLES)],
        ).fetchall()
        self.columns: dict[str, set[str]] = {}
        for table, column in rows:
            self.columns.setdefault(table, set()).add(column)
        missing = [t for t in ("sites", "devices", "users") if t not in self.columns]
        if missing:
            raise LegacyImportError(
                f"The older database has no {', '.join(missing)} table: is this an older HOMEPOT database?"
            )

    def has(self, table: str, column: str) -> bool:
        return column in self.columns.get(table, ())

    def col(self, table: str, alias: str, column: str, cast: str = "text") -> str:
        """`alias.column` when the table has it, else a typed NULL (a trimmed older schema)."""
        if self.has(table, column):
            return f"{alias}.{column}"
        return f"NULL::{cast}"

    def count(self, table: str) -> int:
        if table not in self.columns:
            return 0
        return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    def stream(self, sql: str, params=None) -> Iterator[dict]:
        """Rows of `sql` through a server-side cursor, BATCH_SIZE per round trip."""
        with self.conn.cursor(name="homepot_import", row_factory=dict_row) as cursor:
            cursor.itersize = BATCH_SIZE
            cursor.execute(sql, params)
            yield from cursor


# --- Checks on one row (the same rules as the forms, import_users and the device API) --------


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ("" if value is None else str(value).strip())


def _business_id(value: Any, what: str) -> str:
    text = _text(value)
    if not text:
        raise ValidationError(f"missing {what}", code="missing field")
    try:
        business_id_validator(text)
    except ValidationError:
        raise ValidationError(f"{what} {text!r} is not a valid business id", code="invalid value") from None
    return text


def _json_object(value: Any, what: str) -> dict:
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValidationError(f"{what} is not JSON", code="invalid value") from None
    if not isinstance(value, dict):
        raise ValidationError(f"{what} is not a JSON object", code="invalid value")
    return value


def _without_nul(value: Any) -> tuple[Any, bool]:
    """`value` (decoded JSON) with every NUL character removed from its strings and keys, and
    whether there was one. The older database's `json` columns keep "\\u0000" as written,
    but PostgreSQL's jsonb (and text) cannot hold NUL: one such value would stop the COPY of
    the whole table."""
    if isinstance(value, str):
        return (value.replace("\x00", ""), True) if "\x00" in value else (value, False)
    if isinstance(value, dict):
        found = False
        cleaned = {}
        for key, item in value.items():
            key, key_found = _without_nul(key)
            cleaned[key], item_found = _without_nul(item)
            found = found or key_found or item_found
        return cleaned, found
    if isinstance(value, list):
        pairs = [_without_nul(item) for item in value]
        return [item for item, _ in pairs], any(found for _, found in pairs)
    return value, False


def _clean_json(value: Any, report: TableReport, key: Any, what: str) -> Any:
    value, found = _without_nul(value)
    if found:
        report.cleaned(key, what)
    return value


# A JSON "\u0000" escape (not preceded by an escaping backslash): removed in SQL from health
# check metrics, which are copied from the older database as text.
_NUL_ESCAPE = r"(?<!\\)((?:\\\\)*)\\u0000"


def _max_length(value: str, limit: int, what: str) -> str:
    if len(value) > limit:
        raise ValidationError(f"{what} is longer than {limit} characters", code="invalid value")
    return value


def _skew(value, now, report: TableReport, what: str):
    """A time in the future (an older server's clock ahead of ours) is taken as now."""
    if value is not None and value > now:
        report.notes[f"{what} in the future (clock skew), taken as the import time"] += 1
        return now
    return value


# --- The import ------------------------------------------------------------------------------


def import_homepot(
    *,
    url: str,
    dry_run: bool = False,
    tables: tuple[str, ...] = TABLES,
    progress: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> ImportResult:
    """Import (or with `dry_run`, check and count without keeping anything) the older HOMEPOT
    at `url`. Changes sites, devices, users, jobs, health checks here; appends audit rows (one
    `legacy.imported` per table, one `legacy.imported_event` per older audit row). Safe to
    repeat: a second run updates what changed and adds what is new.

    Each table is its own transaction (a dry run: one transaction, rolled back), so a failure
    keeps the tables before it. Raises LegacyImportError when the older database cannot be read.
    """
    result = ImportResult(dry_run=dry_run)
    legacy_conn = open_legacy(url)
    try:
        legacy = Legacy(legacy_conn)
        importer = _Importer(legacy, result, dry_run=dry_run, progress=progress, log=log)
        try:
            with transaction.atomic() if dry_run else _nothing():
                for table in TABLES:
                    if table not in tables:
                        continue
                    if table not in legacy.columns:
                        log(f"{table}: not in the older database, nothing to import.")
                        continue
                    started = time.monotonic()
                    with transaction.atomic():
                        report = getattr(importer, f"import_{table}")()
                        report.seconds = time.monotonic() - started
                        result.tables[table] = report
                        if not dry_run:
                            _audit_table(report)
                if dry_run:
                    raise _DryRun
        except _DryRun:
            pass
    finally:
        legacy_conn.rollback()
        legacy_conn.close()
    return result


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _audit_table(report: TableReport) -> None:
    audit_record(
        event_type=AuditEvent.LEGACY_IMPORTED,
        description=(
            f"{report.table} imported from the older HOMEPOT: {report.created} created, "
            f"{report.updated} updated, {report.unchanged} unchanged, {report.skipped} skipped"
        ),
        new_values={
            "table": report.table,
            **report.counts(),
            "skip_reasons": dict(report.skip_reasons),
            "notes": dict(report.notes),
        },
    )


def _copy_rows(table: str, columns: tuple[str, ...], rows: list[tuple]) -> None:
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)


def _temp_table(name: str, columns_sql: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {name}")
        cursor.execute(f"CREATE TEMPORARY TABLE {name} ({columns_sql}) ON COMMIT DROP")


def _created_updated(sql: str, params=None) -> tuple[int, int]:
    """Run an upsert whose RETURNING says `(xmax = 0)`: true for an insert, false for an update."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        flags = [row[0] for row in cursor.fetchall()]
    created = sum(1 for flag in flags if flag)
    return created, len(flags) - created


class _Importer:
    def __init__(self, legacy: Legacy, result: ImportResult, *, dry_run, progress, log):
        self.legacy = legacy
        self.result = result
        self.dry_run = dry_run
        self.progress = progress
        self.log = log
        self.now = timezone.now()

    def _bar(self, table: str, total: int):
        return tqdm(total=total, desc=table, unit=" rows", disable=not self.progress, leave=False)

    # --- sites -------------------------------------------------------------------------------

    def import_sites(self) -> TableReport:
        report = TableReport("sites")
        L = self.legacy
        sql = (
            f"SELECT s.id, s.site_id, {L.col('sites', 's', 'name')} AS name, "
            f"{L.col('sites', 's', 'description')} AS description, "
            f"{L.col('sites', 's', 'location')} AS location, "
            f"{L.col('sites', 's', 'created_at', 'timestamptz')}::timestamptz AS created_at "
            "FROM sites s ORDER BY s.id"
        )
        seen: dict[str, int] = {}
        rows = []
        with self._bar("sites", L.count("sites")) as bar:
            for row in L.stream(sql):
                bar.update()
                report.read += 1
                try:
                    site_id = _business_id(row["site_id"], "site_id")
                    if site_id.lower() in seen:
                        raise ValidationError(
                            f"duplicate site_id {site_id!r} (also older id {seen[site_id.lower()]})",
                            code="duplicate",
                        )
                    name = _text(row["name"])
                    if not name:
                        report.notes["missing name, the site_id is used"] += 1
                        name = site_id
                    name = _max_length(name, 200, "name")
                    location = _max_length(_text(row["location"]), 255, "location")
                except ValidationError as exc:
                    report.skip(f"id={row['id']} ({_text(row['site_id']) or '-'})", exc.message, exc.code)
                    continue
                seen[site_id.lower()] = row["id"]
                created_at = _skew(row["created_at"], self.now, report, "created_at") or self.now
                rows.append((site_id, name, _text(row["description"]), location, created_at))
        _temp_table(
            "legacy_sites",
            "site_id text, name text, description text, location text, created_at timestamptz",
        )
        _copy_rows("legacy_sites", ("site_id", "name", "description", "location", "created_at"), rows)
        # A site whose id differs here only by case is the same site (business ids are
        # compared as given elsewhere, so the older spelling is kept only for new sites).
        report.created, report.updated = _created_updated(
            """
            INSERT INTO sites_app_site
                (site_id, name, description, location, region, timezone, is_active, created_at, updated_at)
            SELECT site_id, name, description, location, '', 'UTC', true, created_at, now()
            FROM legacy_sites
            ON CONFLICT (site_id) DO UPDATE SET
                name = EXCLUDED.name, description = EXCLUDED.description,
                location = EXCLUDED.location, updated_at = now()
            WHERE (sites_app_site.name, sites_app_site.description, sites_app_site.location)
                IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.description, EXCLUDED.location)
            RETURNING (xmax = 0)
            """
        )
        return report

    # --- devices -----------------------------------------------------------------------------

    def import_devices(self) -> TableReport:
        report = TableReport("devices")
        L = self.legacy
        sql = (
            f"SELECT d.id, d.device_id, {L.col('devices', 'd', 'name')} AS name, "
            f"{L.col('devices', 'd', 'device_type')} AS device_type, s.site_id AS site_ref, "
            f"d.site_id AS site_pk, {L.col('devices', 'd', 'status')} AS status, "
            f"{L.col('devices', 'd', 'ip_address')}::text AS ip_address, "
            f"{L.col('devices', 'd', 'mac_address')} AS mac_address, "
            f"{L.col('devices', 'd', 'config')}::text AS config, "
            f"{L.col('devices', 'd', 'firmware_version')} AS firmware_version, "
            f"{L.col('devices', 'd', 'last_seen', 'timestamptz')}::timestamptz AS last_seen, "
            f"{L.col('devices', 'd', 'created_at', 'timestamptz')}::timestamptz AS created_at "
            "FROM devices d LEFT JOIN sites s ON s.id = d.site_id ORDER BY d.id"
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT site_id FROM sites_app_site")
            sites_here = {r[0] for r in cursor.fetchall()}
            cursor.execute(
                "SELECT mac_address, device_id FROM devices_app_device WHERE mac_address IS NOT NULL"
            )
            macs_here = dict(cursor.fetchall())
        seen_ids: dict[str, int] = {}
        seen_macs: dict[str, str] = {}
        rows = []
        with self._bar("devices", L.count("devices")) as bar:
            for row in L.stream(sql):
                bar.update()
                report.read += 1
                try:
                    device_id = _business_id(row["device_id"], "device_id")
                    if device_id.lower() in seen_ids:
                        raise ValidationError(
                            f"duplicate device_id {device_id!r} "
                            f"(also older id {seen_ids[device_id.lower()]})",
                            code="duplicate",
                        )
                    if row["site_ref"] is None:
                        raise ValidationError(
                            f"its site (older id {row['site_pk']}) does not exist", code="missing site"
                        )
                    if row["site_ref"].strip() not in sites_here:
                        raise ValidationError(
                            f"its site {row['site_ref']!r} was not imported", code="missing site"
                        )
                    name = _text(row["name"]) or device_id
                    if not _text(row["name"]):
                        report.notes["missing name, the device_id is used"] += 1
                    name = _max_length(name, 200, "name")
                    device_type = _text(row["device_type"]).lower() or DeviceType.POS_TERMINAL
                    if device_type not in DeviceType.values:
                        report.notes[f"device_type {device_type!r} imported as 'other'"] += 1
                        device_type = DeviceType.OTHER
                    status = _text(row["status"]).lower()
                    if status not in DeviceStatus.values:
                        if status:
                            report.notes[f"status {status!r} imported as 'unknown'"] += 1
                        status = DeviceStatus.UNKNOWN
                    ip = _text(row["ip_address"]) or None
                    if ip is not None:
                        try:
                            ip = str(ipaddress.ip_address(ip.split("/")[0]))
                        except ValueError:
                            raise ValidationError(
                                f"IP address {ip!r} is invalid", code="invalid IP address"
                            ) from None
                    mac = _text(row["mac_address"]) or None
                    if mac is not None:
                        try:
                            mac = normalize_mac(mac)
                        except ValidationError:
                            raise ValidationError(
                                f"MAC address {mac!r} is invalid", code="invalid MAC address"
                            ) from None
                        if mac in seen_macs:
                            raise ValidationError(
                                f"MAC address {mac} is duplicated (device {seen_macs[mac]!r} has it)",
                                code="duplicate MAC address",
                            )
                        owner = macs_here.get(mac)
                        if owner is not None and owner.lower() != device_id.lower():
                            raise ValidationError(
                                f"MAC address {mac} is duplicated (device {owner!r} here has it)",
                                code="duplicate MAC address",
                            )
                    config = _json_object(row["config"], "config")
                    config = _clean_json(config, report, f"id={row['id']}", "config")
                    firmware = _max_length(_text(row["firmware_version"]), 64, "firmware_version")
                except ValidationError as exc:
                    report.skip(f"id={row['id']} ({_text(row['device_id']) or '-'})", exc.message, exc.code)
                    continue
                seen_ids[device_id.lower()] = row["id"]
                if mac:
                    seen_macs[mac] = device_id
                rows.append(
                    (
                        device_id,
                        name,
                        device_type,
                        row["site_ref"].strip(),
                        status,
                        ip,
                        mac,
                        json.dumps(config),
                        firmware,
                        _skew(row["last_seen"], self.now, report, "last_seen"),
                        _skew(row["created_at"], self.now, report, "created_at") or self.now,
                    )
                )
        columns = (
            "device_id",
            "name",
            "device_type",
            "site_ref",
            "status",
            "ip_address",
            "mac_address",
            "config",
            "firmware_version",
            "last_seen",
            "created_at",
        )
        _temp_table(
            "legacy_devices",
            "device_id text, name text, device_type text, site_ref text, status text, ip_address inet, "
            "mac_address text, config jsonb, firmware_version text, last_seen timestamptz, "
            "created_at timestamptz",
        )
        _copy_rows("legacy_devices", columns, rows)
        # Status and last_seen are live state, owned by the terminal's reports once it talks
        # to us: set on the first import only, never overwritten by a later run.
        report.created, report.updated = _created_updated(
            """
            INSERT INTO devices_app_device
                (device_id, name, device_type, site_id, status, ip_address, mac_address, config,
                 firmware_version, push_channel, health_status, app_version, last_seen,
                 created_at, updated_at)
            SELECT t.device_id, t.name, t.device_type, s.id, t.status, t.ip_address, t.mac_address,
                   t.config, t.firmware_version, 'poll', '', '', t.last_seen, t.created_at, now()
            FROM legacy_devices t JOIN sites_app_site s ON s.site_id = t.site_ref
            ON CONFLICT (device_id) DO UPDATE SET
                name = EXCLUDED.name, device_type = EXCLUDED.device_type, site_id = EXCLUDED.site_id,
                ip_address = EXCLUDED.ip_address, mac_address = EXCLUDED.mac_address,
                config = EXCLUDED.config, firmware_version = EXCLUDED.firmware_version,
                updated_at = now()
            WHERE (devices_app_device.name, devices_app_device.device_type, devices_app_device.site_id,
                   devices_app_device.ip_address, devices_app_device.mac_address,
                   devices_app_device.config, devices_app_device.firmware_version)
                IS DISTINCT FROM
                  (EXCLUDED.name, EXCLUDED.device_type, EXCLUDED.site_id, EXCLUDED.ip_address,
                   EXCLUDED.mac_address, EXCLUDED.config, EXCLUDED.firmware_version)
            RETURNING (xmax = 0)
            """
        )
        return report

    # --- users -------------------------------------------------------------------------------

    def import_users(self) -> TableReport:
        """The rules of `manage.py import_users`: username, email and a bcrypt hash are needed;
        the hash is kept (legacy_bcrypt), so the old password works and is re-hashed at the
        first login; admins become administrators; nobody else gets any right (no site
        membership: an administrator grants those here)."""
        report = TableReport("users")
        L = self.legacy
        sql = (
            f"SELECT u.id, u.username, {L.col('users', 'u', 'email')} AS email, "
            f"{L.col('users', 'u', 'hashed_password')} AS hashed_password, "
            f"{L.col('users', 'u', 'is_admin', 'boolean')} AS is_admin, "
            f"{L.col('users', 'u', 'is_active', 'boolean')} AS is_active, "
            f"{L.col('users', 'u', 'created_at', 'timestamptz')}::timestamptz AS created_at "
            "FROM users u ORDER BY u.id"
        )
        here = {u.username.lower(): u for u in User.objects.all()}
        emails_here = {u.email.lower(): u.username.lower() for u in here.values()}
        seen: dict[str, int] = {}
        username_check = UnicodeUsernameValidator()
        new, changed = [], []
        with self._bar("users", L.count("users")) as bar:
            for row in L.stream(sql):
                bar.update()
                report.read += 1
                username = _text(row["username"])
                try:
                    email = _text(row["email"]).lower()
                    raw_hash = _text(row["hashed_password"])
                    missing = [
                        n for n, v in (("username", username), ("email", email), ("hash", raw_hash)) if not v
                    ]
                    if missing:
                        raise ValidationError(f"missing {', '.join(missing)}", code="missing field")
                    try:
                        username_check(username)
                        _max_length(username, 150, "username")
                    except ValidationError:
                        raise ValidationError(
                            f"username {username!r} is invalid", code="invalid value"
                        ) from None
                    try:
                        validate_email(email)
                    except ValidationError:
                        raise ValidationError(f"email {email!r} is invalid", code="invalid value") from None
                    if not is_legacy_bcrypt_hash(raw_hash):
                        raise ValidationError("hashed_password is not a bcrypt hash", code="bad hash")
                    for key, value in (("username", username.lower()), ("email", email)):
                        if f"{key}:{value}" in seen:
                            raise ValidationError(
                                f"{key} repeats older id {seen[f'{key}:{value}']}", code="duplicate"
                            )
                    owner = emails_here.get(email)
                    if owner is not None and owner != username.lower():
                        raise ValidationError(
                            f"email {email!r} is already used by another user here", code="duplicate"
                        )
                except ValidationError as exc:
                    report.skip(f"id={row['id']} ({username or '-'})", exc.message, exc.code)
                    continue
                seen[f"username:{username.lower()}"] = row["id"]
                seen[f"email:{email}"] = row["id"]
                is_admin = bool(row["is_admin"])
                is_active = True if row["is_active"] is None else bool(row["is_active"])
                password = LegacyBcryptPasswordHasher.from_raw(raw_hash)
                user = here.get(username.lower())
                if user is None:
                    joined = _skew(row["created_at"], self.now, report, "created_at") or self.now
                    new.append(
                        User(
                            username=username,
                            email=email,
                            password=password,
                            is_superuser=is_admin,
                            is_staff=is_admin,
                            is_active=is_active,
                            date_joined=joined,
                        )
                    )
                    continue
                before = (user.email, user.is_superuser, user.is_staff, user.is_active, user.password)
                user.email, user.is_superuser, user.is_active = email, is_admin, is_active
                user.is_staff = is_admin or (user.is_staff and not before[1])
                # The older password counts only until the user has logged in here (then
                # Django re-hashed it and the older one is out of date).
                if user.password.startswith(f"{LegacyBcryptPasswordHasher.algorithm}$"):
                    user.password = password
                if before != (user.email, user.is_superuser, user.is_staff, user.is_active, user.password):
                    changed.append(user)
                    if before[3] and not is_active:
                        ApiToken.objects.filter(user=user, revoked_at__isnull=True).update(
                            revoked_at=self.now
                        )
        User.objects.bulk_create(new, batch_size=BATCH_SIZE)
        User.objects.bulk_update(
            changed, ["email", "is_superuser", "is_staff", "is_active", "password"], batch_size=BATCH_SIZE
        )
        report.created, report.updated = len(new), len(changed)
        return report

    # --- jobs --------------------------------------------------------------------------------

    def import_jobs(self) -> TableReport:
        report = TableReport("jobs")
        L = self.legacy
        payload = "payload" if L.has("jobs", "payload") else "config"
        sql = (
            f"SELECT j.id, {L.col('jobs', 'j', 'job_id')} AS job_ref, s.site_id AS site_ref, "
            f"j.site_id AS site_pk, {L.col('jobs', 'j', 'action')} AS action, "
            f"{L.col('jobs', 'j', 'description')} AS description, "
            f"{L.col('jobs', 'j', payload)}::text AS payload, "
            f"{L.col('jobs', 'j', 'priority')}::text AS priority, "
            f"{L.col('jobs', 'j', 'status')} AS status, "
            f"{L.col('jobs', 'j', 'created_at', 'timestamptz')}::timestamptz AS created_at, "
            f"{L.col('jobs', 'j', 'started_at', 'timestamptz')}::timestamptz AS started_at, "
            f"{L.col('jobs', 'j', 'completed_at', 'timestamptz')}::timestamptz AS completed_at "
            "FROM jobs j LEFT JOIN sites s ON s.id = j.site_id ORDER BY j.id"
        )
        with connection.cursor() as cursor:
            cursor.execute("SELECT site_id FROM sites_app_site")
            sites_here = {r[0] for r in cursor.fetchall()}
        rows = []
        with self._bar("jobs", L.count("jobs")) as bar:
            for row in L.stream(sql):
                bar.update()
                report.read += 1
                try:
                    if row["site_ref"] is None:
                        raise ValidationError(
                            f"its site (older id {row['site_pk']}) does not exist", code="missing site"
                        )
                    if row["site_ref"].strip() not in sites_here:
                        raise ValidationError(
                            f"its site {row['site_ref']!r} was not imported", code="missing site"
                        )
                    action = _text(row["action"]).lower()
                    if action not in JobAction.values:
                        raise ValidationError(
                            f"action {action or '(none)'!r} is not one this HOMEPOT runs",
                            code="unknown action",
                        )
                    payload_value = _json_object(row["payload"], "payload")
                    payload_value = _clean_json(payload_value, report, f"id={row['id']}", "payload")
                    status, reason = self._job_status(_text(row["status"]).lower(), row["id"], report)
                except ValidationError as exc:
                    report.skip(f"id={row['id']}", exc.message, exc.code)
                    continue
                priority = _text(row["priority"]).lower()
                if priority not in JobPriority.values:
                    priority = JobPriority.NORMAL
                created_at = _skew(row["created_at"], self.now, report, "created_at") or self.now
                started = _skew(row["started_at"], self.now, report, "started_at")
                completed = _skew(row["completed_at"], self.now, report, "completed_at")
                if started and completed and completed < started:
                    report.notes["completed before it started (clock skew): start time dropped"] += 1
                    started = None
                description = _text(row["description"])
                if _text(row["job_ref"]):
                    description = f"{description} (older job {_text(row['job_ref'])})".strip()
                rows.append(
                    (
                        row["id"],
                        row["site_ref"].strip(),
                        action,
                        description,
                        json.dumps(payload_value),
                        priority,
                        status,
                        reason,
                        created_at,
                        started,
                        completed,
                    )
                )
        columns = (
            "legacy_id",
            "site_ref",
            "action",
            "description",
            "payload",
            "priority",
            "status",
            "status_reason",
            "created_at",
            "started_at",
            "completed_at",
        )
        _temp_table(
            "legacy_jobs",
            "legacy_id bigint, site_ref text, action text, description text, payload jsonb, priority text, "
            "status text, status_reason text, created_at timestamptz, started_at timestamptz, "
            "completed_at timestamptz",
        )
        _copy_rows("legacy_jobs", columns, rows)
        report.created, report.updated = _created_updated(
            """
            INSERT INTO jobs_app_job
                (legacy_id, site_id, segment, action, description, payload, priority, status,
                 status_reason, created_at, updated_at, started_at, completed_at, batch_size)
            SELECT t.legacy_id, s.id, '{}'::jsonb, t.action, t.description, t.payload, t.priority,
                   t.status, t.status_reason, t.created_at, now(), t.started_at, t.completed_at, 2000
            FROM legacy_jobs t JOIN sites_app_site s ON s.site_id = t.site_ref
            ON CONFLICT (legacy_id) WHERE legacy_id IS NOT NULL DO UPDATE SET
                status = EXCLUDED.status, status_reason = EXCLUDED.status_reason,
                description = EXCLUDED.description, payload = EXCLUDED.payload,
                started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at,
                updated_at = now()
            -- A job imported as paused that an operator has resumed here is ours now.
            WHERE jobs_app_job.status IN ('paused', 'completed', 'failed', 'cancelled')
              AND jobs_app_job.materialised_at IS NULL
              AND (jobs_app_job.status, jobs_app_job.status_reason, jobs_app_job.description,
                   jobs_app_job.payload, jobs_app_job.started_at, jobs_app_job.completed_at)
                IS DISTINCT FROM
                  (EXCLUDED.status, EXCLUDED.status_reason, EXCLUDED.description, EXCLUDED.payload,
                   EXCLUDED.started_at, EXCLUDED.completed_at)
            RETURNING (xmax = 0)
            """
        )
        return report

    @staticmethod
    def _job_status(status: str, legacy_id, report: TableReport) -> tuple[str, str]:
        """Finished jobs keep their status. A job the older system was still running is
        imported paused (with its older status in the reason), so nothing is sent to the
        terminals by the import itself: an operator resumes it here to send it from here."""
        if status in _JOB_KEEP:
            return status, ""
        if status in _JOB_UNFINISHED:
            report.notes[f"unfinished ({status}) job imported as paused"] += 1
            return (
                JobStatus.PAUSED,
                f"Imported from the older HOMEPOT while {status}; resume it to send it from here.",
            )
        raise ValidationError(f"status {status or '(none)'!r} is unknown", code="unknown status")

    # --- health checks -----------------------------------------------------------------------

    def import_health_checks(self) -> TableReport:
        """Streamed with COPY from the older database into a temporary table here, checked and
        inserted in one set-based statement; rows already imported (same older id) are left."""
        report = TableReport("health_checks")
        L = self.legacy
        if L.has("health_checks", "status"):
            status = "lower(h.status::text)"
        elif L.has("health_checks", "is_healthy"):
            status = "CASE WHEN h.is_healthy THEN 'healthy' WHEN NOT h.is_healthy THEN 'unhealthy' END"
        else:
            status = "NULL::text"
        time_column = "timestamp" if L.has("health_checks", "timestamp") else "checked_at"
        metrics = "response_data" if L.has("health_checks", "response_data") else "metrics"
        select = (
            f"SELECT h.id, d.device_id, {status}, "
            f"{L.col('health_checks', 'h', 'response_time_ms', 'bigint')}::bigint, "
            f"{L.col('health_checks', 'h', metrics, 'text')}::text, "
            f"{L.col('health_checks', 'h', 'error_message')}, "
            f"{L.col('health_checks', 'h', time_column, 'timestamptz')}::timestamptz "
            "FROM health_checks h LEFT JOIN devices d ON d.id = h.device_id"
        )
        total = L.count("health_checks")
        _temp_table(
            "legacy_health",
            # metrics as text: cast to jsonb only once NUL escapes are removed (below).
            "legacy_id bigint, device_ref text, status text, response_time_ms bigint, metrics text, "
            "error_message text, checked_at timestamptz",
        )
        with (
            self._bar("health_checks", total) as bar,
            L.conn.cursor() as src,
            connection.cursor() as dst,
            src.copy(f"COPY ({select}) TO STDOUT") as copy_out,
            dst.cursor.copy("COPY legacy_health FROM STDIN") as copy_in,
        ):
            # Text COPY both ends, same columns: the bytes pass through untouched.
            for chunk in copy_out:
                copy_in.write(chunk)
                bar.update(bytes(chunk).count(b"\n"))
        report.read = total
        healthy = ", ".join(f"'{w}'" for w in _HEALTH_WORDS)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE legacy_health")
            # Why rows cannot be taken, first reason wins: counted, with the first ids named.
            cursor.execute(
                f"""
                WITH r AS (
                    SELECT t.legacy_id,
                        CASE
                            WHEN t.device_ref IS NULL THEN 'its device is not in the older database'
                            WHEN d.id IS NULL THEN 'its device was not imported'
                            WHEN t.checked_at IS NULL THEN 'missing time'
                            WHEN t.status IS NULL OR t.status NOT IN ({healthy})
                                THEN 'missing or unknown status'
                        END AS reason
                    FROM legacy_health t LEFT JOIN devices_app_device d ON d.device_id = t.device_ref
                )
                SELECT reason, count(*), (array_agg(legacy_id ORDER BY legacy_id))[1:%s]
                FROM r WHERE reason IS NOT NULL GROUP BY reason
                """,
                [HEALTH_SKIP_EXAMPLES],
            )
            for reason, count, examples in cursor.fetchall():
                report.skipped += count
                report.skip_reasons[reason] += count
                report.skipped_rows.extend((f"id={i}", reason) for i in examples)
            # The substring test first: a plain search, the regular expression only where it hits.
            with_nul = "strpos(metrics, %s) > 0 AND metrics ~ %s"
            cursor.execute(
                "SELECT count(*), (array_agg(legacy_id ORDER BY legacy_id))[1:%s] FROM legacy_health "
                f"WHERE {with_nul}",
                [HEALTH_SKIP_EXAMPLES, "\\u0000", _NUL_ESCAPE],
            )
            cleaned, examples = cursor.fetchone()
            if cleaned:
                report.notes["NUL characters (\\u0000) removed from response_data"] += cleaned
                report.cleaned_rows.extend((f"id={i}", "response_data") for i in examples)
                cursor.execute(
                    "UPDATE legacy_health SET metrics = regexp_replace(metrics, %s, %s, 'g') "
                    f"WHERE {with_nul}",  # noqa: S608 - a constant of this module
                    [_NUL_ESCAPE, r"\1", "\\u0000", _NUL_ESCAPE],
                )
            cursor.execute("SELECT count(*) FROM legacy_health WHERE checked_at > now()")
            future = cursor.fetchone()[0]
            if future:
                report.notes["checked_at in the future (clock skew), taken as the import time"] += future
            mapping = " ".join(f"WHEN '{w}' THEN '{s}'" for w, s in _HEALTH_WORDS.items())
            # The history has no DEFAULT partition: the imported days get theirs first.
            cursor.execute(
                "SELECT DISTINCT (LEAST(checked_at, now()) AT TIME ZONE 'UTC')::date FROM legacy_health "
                "WHERE checked_at IS NOT NULL"
            )
            partitions.history_days_ensure(partitions.HEALTH, [row[0] for row in cursor.fetchall()])
            cursor.execute(
                f"""
                INSERT INTO monitoring_app_healthcheck
                    (legacy_id, device_id, status, response_time_ms, metrics, error_message, checked_at)
                SELECT t.legacy_id, d.id, CASE t.status {mapping} END,
                       CASE WHEN t.response_time_ms BETWEEN 0 AND 2147483647 THEN t.response_time_ms END,
                       CASE WHEN t.metrics IS NULL THEN '{{}}'::jsonb
                            WHEN jsonb_typeof(t.metrics::jsonb) = 'object' THEN t.metrics::jsonb
                            ELSE jsonb_build_object('response_data', t.metrics::jsonb) END,
                       coalesce(t.error_message, ''), LEAST(t.checked_at, now())
                FROM legacy_health t JOIN devices_app_device d ON d.device_id = t.device_ref
                WHERE t.checked_at IS NOT NULL AND t.status IN ({healthy})
                  AND NOT EXISTS (SELECT 1 FROM monitoring_app_healthcheck h WHERE h.legacy_id = t.legacy_id)
                ON CONFLICT (legacy_id, checked_at) WHERE legacy_id IS NOT NULL DO NOTHING
                """
            )
            report.created = cursor.rowcount
            # Devices that have no health yet show their latest imported one.
            cursor.execute(
                """
                UPDATE devices_app_device d
                SET health_status = h.status, last_health_at = h.checked_at, health_changed_at = h.checked_at
                FROM (
                    SELECT DISTINCT ON (device_id) device_id, status, checked_at
                    FROM monitoring_app_healthcheck WHERE legacy_id IS NOT NULL
                    ORDER BY device_id, checked_at DESC, id DESC
                ) h
                WHERE d.id = h.device_id AND d.health_status = ''
                """
            )
        return report

    # --- audit logs --------------------------------------------------------------------------

    def import_audit_logs(self) -> TableReport:
        """Each older audit row becomes one `legacy.imported_event` appended to our hash chain
        (so verify_audit stays intact): the chain's created_at is the import time; the older
        time, actor, event type and values are in its hashed new_values."""
        report = TableReport("audit_logs")
        L = self.legacy
        done = set(
            stream(
                AuditLog.objects.filter(event_type=AuditEvent.LEGACY_IMPORTED_EVENT).values_list(
                    "new_values__legacy_id", flat=True
                ),
                chunk_size=BATCH_SIZE,
            )
        )
        users = {u.lower(): pk for pk, u in User.objects.values_list("pk", "username")}
        with connection.cursor() as cursor:
            cursor.execute("SELECT site_id, id FROM sites_app_site")
            sites = dict(cursor.fetchall())
            cursor.execute("SELECT legacy_id, id FROM jobs_app_job WHERE legacy_id IS NOT NULL")
            jobs = dict(cursor.fetchall())
        sql = (
            f"SELECT a.id, {L.col('audit_logs', 'a', 'event_type')} AS event_type, "
            f"{L.col('audit_logs', 'a', 'description')} AS description, "
            f"u.username AS actor, s.site_id AS site_ref, d.device_id AS device_ref, "
            f"{L.col('audit_logs', 'a', 'job_id', 'bigint')}::bigint AS job_pk, "
            f"{L.col('audit_logs', 'a', 'old_values', 'text')}::text AS old_values, "
            f"{L.col('audit_logs', 'a', 'new_values', 'text')}::text AS new_values, "
            f"{L.col('audit_logs', 'a', 'ip_address', 'text')}::text AS ip_address, "
            f"{L.col('audit_logs', 'a', 'user_agent', 'text')} AS user_agent, "
            f"{L.col('audit_logs', 'a', 'created_at', 'timestamptz')}::timestamptz AS created_at "
            "FROM audit_logs a "
            + (
                "LEFT JOIN users u ON u.id = a.user_id "
                if L.has("audit_logs", "user_id")
                else "LEFT JOIN users u ON false "
            )
            + (
                "LEFT JOIN sites s ON s.id = a.site_id "
                if L.has("audit_logs", "site_id")
                else "LEFT JOIN sites s ON false "
            )
            + (
                "LEFT JOIN devices d ON d.id = a.device_id "
                if L.has("audit_logs", "device_id")
                else "LEFT JOIN devices d ON false "
            )
            + "ORDER BY a.id"
        )
        batch: list[AuditLog] = []
        with self._bar("audit_logs", L.count("audit_logs")) as bar:
            for row in L.stream(sql):
                bar.update()
                report.read += 1
                if row["id"] in done:
                    continue
                try:
                    event_type = _text(row["event_type"])
                    if not event_type:
                        raise ValidationError("missing event_type", code="missing field")
                    old_values = _clean_json(
                        _loose_json(row["old_values"]), report, f"id={row['id']}", "old_values"
                    )
                    new_values = _clean_json(
                        _loose_json(row["new_values"]), report, f"id={row['id']}", "new_values"
                    )
                except ValidationError as exc:
                    report.skip(f"id={row['id']}", exc.message, exc.code)
                    continue
                if row["created_at"] is None:
                    report.notes["missing time (kept without one)"] += 1
                elif row["created_at"] > self.now:
                    report.notes["time in the future (clock skew), kept as written"] += 1
                actor = _text(row["actor"])
                site_ref = _text(row["site_ref"])
                batch.append(
                    AuditLog(
                        event_type=AuditEvent.LEGACY_IMPORTED_EVENT,
                        actor_id=users.get(actor.lower()),
                        actor_ref=actor[:150],
                        site_id=sites.get(site_ref),
                        site_ref=site_ref[:64],
                        device_id=None,
                        device_ref=_text(row["device_ref"])[:64],
                        job_id=jobs.get(row["job_pk"]),
                        description=_text(row["description"]),
                        old_values=None,
                        new_values={
                            "legacy_id": row["id"],
                            "original_time": row["created_at"].isoformat() if row["created_at"] else None,
                            "original_event_type": event_type,
                            "original_actor": actor or None,
                            "old_values": old_values,
                            "new_values": new_values,
                        },
                        source_ip=_canonical_ip(_text(row["ip_address"]).split("/")[0]),
                        user_agent=_text(row["user_agent"])[:512],
                    )
                )
                report.created += 1
                if len(batch) >= BATCH_SIZE:
                    self._append(batch)
                    batch = []
        if batch:
            self._append(batch)
        # Older ids already imported: unchanged (history does not change).
        return report

    def _append(self, batch: list[AuditLog]) -> None:
        if self.dry_run:
            return
        with transaction.atomic():
            append_batch_to_chain(batch)


def _loose_json(value: Any) -> Any:
    if value is None or value == "":
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise ValidationError("old_values or new_values are not JSON", code="invalid value") from None
