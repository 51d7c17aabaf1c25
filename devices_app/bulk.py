"""Set-based creation of a synthetic fleet: sites, their devices and (optionally) health history.

`manage.py create_fleet` is the door; this module holds the rules, so the shape of a generated
fleet is written down once. On PostgreSQL each batch is ONE `INSERT ... SELECT ... FROM
generate_series(...)` statement (sites, devices and health checks chained through
data-modifying CTEs): the rows are computed inside the server and Python holds no row at all,
so memory stays flat at a million devices. Other databases (the SQLite demo default) get the
same fleet through `bulk_create` in batches.

What a generated fleet looks like (both paths):
- sites `<prefix>-<n>` (zero-padded), n = 1..sites, "Store Location n", spread over regions
  and time zones;
- devices per site, numbered by type within the site like the demo chain: in every block of
  ten, eight POS terminals, one card reader, one receipt printer; `device_id` is
  `<site_id>-pos-terminal-<k>` (or `-card-reader-`, `-receipt-printer-`), fleet-unique because
  the site id is in it;
- MAC addresses from the locally administered block 02:FE:xx:xx:xx:xx that HOMEPOT keeps for
  synthetic fleets, handed out above the highest one already used, so they are unique;
- IP addresses consecutive in 10.0.0.0/8; statuses mostly online (85 %), with offline,
  maintenance, error and unknown devices; `last_seen` to match the status.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.utils import timezone

from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device, DeviceSearch, SiteDeviceCount, SiteHealthCount
from monitoring_app import partitions
from monitoring_app.choices import AuditEvent, HealthStatus
from monitoring_app.models import HealthCheck
from monitoring_app.services import audit_record
from sites_app.models import Site
from sites_app.validators import business_id_validator

# --- The shape of a generated fleet ---------------------------------------------------------

REGIONS = ("Northeast", "Southeast", "Midwest", "South Central", "Mountain", "Southwest", "Pacific")
TIMEZONES = (
    "America/New_York",
    "America/Chicago",
    "America/Denver",
    "America/Phoenix",
    "America/Los_Angeles",
    "America/Anchorage",
    "Pacific/Honolulu",
)
# Position r (0..9) in each block of ten devices -> type; the k-th of its type in the site.
POS_PER_BLOCK = 8
TYPE_LABELS = {
    DeviceType.POS_TERMINAL: ("POS Terminal", "pos-terminal"),
    DeviceType.CARD_READER: ("Card Reader", "card-reader"),
    DeviceType.RECEIPT_PRINTER: ("Receipt Printer", "receipt-printer"),
}
# A roll in 0..999 picks the status: (upper bound, status), cumulative.
STATUS_ROLLS = (
    (850, DeviceStatus.ONLINE),
    (920, DeviceStatus.OFFLINE),
    (950, DeviceStatus.MAINTENANCE),
    (970, DeviceStatus.ERROR),
    (1000, DeviceStatus.UNKNOWN),
)
# How long ago a device in each status was last seen: (minimum, spread) in seconds.
LAST_SEEN_AGO = {
    DeviceStatus.ONLINE: (0, 300),
    DeviceStatus.OFFLINE: (3_600, 259_200),
    DeviceStatus.MAINTENANCE: (600, 7_200),
    DeviceStatus.ERROR: (0, 3_600),
}
# POS firmware: most of the fleet on the current release, a tail on older ones.
POS_FIRMWARE = ("4.2.1",) * 7 + ("4.2.0",) * 2 + ("4.1.7",)
OTHER_FIRMWARE = {DeviceType.CARD_READER: "2.8.3", DeviceType.RECEIPT_PRINTER: "1.5.0"}
HEALTH_FOR_STATUS = {
    DeviceStatus.ONLINE: HealthStatus.HEALTHY,
    DeviceStatus.OFFLINE: HealthStatus.DEGRADED,
    DeviceStatus.MAINTENANCE: HealthStatus.DEGRADED,
    DeviceStatus.ERROR: HealthStatus.UNHEALTHY,
}
HEALTH_ERROR = "Payment module not responding (EMV kernel timeout)."
HEALTH_CHECK_INTERVAL = timedelta(minutes=5)
GATEWAY_URL = "https://payments.example.com"

# 02:FE:00:00:00:00 .. 02:FE:FF:FF:FF:FF: locally administered (bit 0x02), never a vendor's.
MAC_BLOCK_FIRST = 0x02FE_0000_0000
MAC_BLOCK_LAST = 0x02FE_FFFF_FFFF
FIRST_IP = "10.0.0.1"
IP_SPAN = 2**24 - 2  # 10.0.0.1 .. 10.255.255.254, then round again (IPs need not be unique)

ID_MAX_LENGTH = 64
_ADVISORY_LOCK_KEY = 0x464C454554  # "FLEET": one create_fleet at a time picks its MAC range


class FleetError(ValueError):
    """The requested fleet cannot be created as asked; the message says why and what to do."""


def mac_text(number: int) -> str:
    """48-bit number -> canonical MAC text (upper-case, colon-separated)."""
    digits = f"{number:012X}"
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def mac_number(text: str) -> int:
    return int(text.replace(":", ""), 16)


@dataclass(frozen=True)
class FleetPlan:
    """Everything a run needs to know before it inserts its first row."""

    prefix: str
    sites: int
    devices_per_site: int
    health_checks_per_device: int = 0
    seed: int = 0
    first_mac: int = MAC_BLOCK_FIRST + 1
    now: datetime = field(default_factory=timezone.now)

    @property
    def devices(self) -> int:
        return self.sites * self.devices_per_site

    @property
    def width(self) -> int:
        return max(4, len(str(self.sites)))

    def site_id(self, number: int) -> str:
        return f"{self.prefix}-{number:0{self.width}d}"

    @property
    def last_mac(self) -> int:
        return self.first_mac + self.devices - 1

    @property
    def longest_device_id(self) -> int:
        widest_number = len(str(self.devices_per_site))
        return len(self.site_id(self.sites)) + len("-receipt-printer-") + widest_number


def validate_request(
    *, prefix: str, sites: int, devices_per_site: int, health_checks_per_device: int = 0, batch_size: int = 1
) -> None:
    """Refuse (FleetError) arguments that cannot make a valid fleet. Touches no database."""
    for name, value, least in (
        ("--sites", sites, 1),
        ("--devices-per-site", devices_per_site, 1),
        ("--health-checks-per-device", health_checks_per_device, 0),
        ("--batch-size", batch_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise FleetError(f"{name} must be a whole number of at least {least} (got {value!r}).")
    try:
        business_id_validator(prefix)
    except ValidationError:
        raise FleetError(
            f"--site-prefix {prefix!r} is not a valid id prefix: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        ) from None
    if prefix[-1] in "-._":
        raise FleetError(f"--site-prefix {prefix!r} must not end with {prefix[-1]!r}; a '-' is added.")
    plan = FleetPlan(prefix=prefix, sites=sites, devices_per_site=devices_per_site)
    if plan.longest_device_id > ID_MAX_LENGTH:
        raise FleetError(
            f"--site-prefix {prefix!r} is too long for this fleet: device ids would reach "
            f"{plan.longest_device_id} characters (at most {ID_MAX_LENGTH})."
        )
    if plan.devices > MAC_BLOCK_LAST - MAC_BLOCK_FIRST:
        raise FleetError(f"{plan.devices:,} devices is more than the synthetic MAC block holds.")


def plan_fleet(
    *,
    prefix: str,
    sites: int,
    devices_per_site: int,
    health_checks_per_device: int = 0,
    seed: int = 0,
    batch_size: int = 1,
    using: str = "default",
) -> FleetPlan:
    """Check the request against the database and fix the MAC range. Call inside the
    transaction that inserts the fleet (on PostgreSQL it takes a lock held until then).

    Raises FleetError when the prefix's ids already exist or the MAC block is used up.
    """
    validate_request(
        prefix=prefix,
        sites=sites,
        devices_per_site=devices_per_site,
        health_checks_per_device=health_checks_per_device,
        batch_size=batch_size,
    )
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])
    check_prefix_unused(prefix, using=using)
    highest = (
        Device.objects.using(using)
        .filter(mac_address__gte=mac_text(MAC_BLOCK_FIRST), mac_address__lte=mac_text(MAC_BLOCK_LAST))
        .order_by("-mac_address")
        .values_list("mac_address", flat=True)
        .first()
    )
    first_mac = mac_number(highest) + 1 if highest else MAC_BLOCK_FIRST + 1
    plan = FleetPlan(
        prefix=prefix,
        sites=sites,
        devices_per_site=devices_per_site,
        health_checks_per_device=health_checks_per_device,
        seed=seed,
        first_mac=first_mac,
    )
    if plan.last_mac > MAC_BLOCK_LAST:
        raise FleetError(
            f"The synthetic MAC block has room for {MAC_BLOCK_LAST - first_mac + 1:,} more devices; "
            f"{plan.devices:,} asked."
        )
    return plan


def check_prefix_unused(prefix: str, *, using: str = "default") -> None:
    """Refuse (FleetError) a prefix whose ids exist: every generated site and device id starts
    with "<prefix>-", so one prefix lookup per table rules out any collision. The sites' is
    indexed; the devices' scans the table up to the first hit (no pattern index on the device
    ID: migration 0010), a fraction of a second at 1,000,000 devices, once per command."""
    taken = (
        (
            Site.objects.using(using)
            .filter(site_id__startswith=f"{prefix}-")
            .values_list("site_id", flat=True)
        ).first()
        or next(
            iter(
                Device.objects.using(using)
                .filter(device_id__startswith=f"{prefix}-")
                .order_by()  # any hit will do: no walk of the whole device ID index in order
                .values_list("device_id", flat=True)[:1]
            ),
            None,
        )
    )
    if taken:
        raise FleetError(
            f"Ids with the prefix '{prefix}-' already exist (e.g. {taken}); nothing was created. "
            "Choose another --site-prefix."
        )


@dataclass
class FleetResult:
    sites: int = 0
    devices: int = 0
    health_checks: int = 0
    seconds: float = 0.0


def create_fleet(
    *,
    prefix: str,
    sites: int,
    devices_per_site: int,
    health_checks_per_device: int = 0,
    seed: int = 0,
    batch_size: int = 25_000,
    progress: Callable[[int], None] | None = None,
    using: str = "default",
) -> tuple[FleetPlan, FleetResult]:
    """Insert a synthetic fleet and one `devices.bulk_created` audit row, all or nothing.

    Batches hold about `batch_size` devices (whole sites); `progress(n)` is called after each
    batch with the number of devices it added. Not repeatable with the same prefix: a second
    run raises FleetError and changes nothing.
    """
    started = time.monotonic()
    result = FleetResult()
    with transaction.atomic(using=using):
        plan = plan_fleet(
            prefix=prefix,
            sites=sites,
            devices_per_site=devices_per_site,
            health_checks_per_device=health_checks_per_device,
            seed=seed,
            batch_size=batch_size,
            using=using,
        )
        insert_batch = _insert_batch_sql if connections[using].vendor == "postgresql" else _insert_batch_orm
        if plan.health_checks_per_device:
            _history_days_ensure(plan)
        sites_per_batch = max(1, batch_size // devices_per_site)
        for first in range(1, sites + 1, sites_per_batch):
            last = min(sites, first + sites_per_batch - 1)
            devices, checks = insert_batch(plan, first, last, using)
            result.sites += last - first + 1
            result.devices += devices
            result.health_checks += checks
            if progress:
                progress(devices)
        audit_record(
            event_type=AuditEvent.DEVICES_BULK_CREATED,
            description=(
                f"create_fleet: {result.sites:,} sites and {result.devices:,} devices "
                f"with the prefix '{prefix}-'"
            ),
            new_values=_audit_summary(plan, result),
        )
    result.seconds = time.monotonic() - started
    return plan, result


def _audit_summary(plan: FleetPlan, result: FleetResult) -> dict:
    return {
        "site_prefix": plan.prefix,
        "sites": result.sites,
        "devices_per_site": plan.devices_per_site,
        "devices": result.devices,
        "health_checks": result.health_checks,
        "first_site_id": plan.site_id(1),
        "last_site_id": plan.site_id(plan.sites),
        "first_mac_address": mac_text(plan.first_mac),
        "last_mac_address": mac_text(plan.last_mac),
        "seed": plan.seed,
    }


def analyze_tables(using: str = "default") -> None:
    """Refresh the planner's statistics after a big load (PostgreSQL), so the very next
    query plans with the new row counts instead of waiting for autovacuum: the tables the
    load wrote and those PostgreSQL's triggers kept beside the devices (the console's
    search table and the per-site counts). Without the search table's, a search of a
    million devices was planned as if the table were empty: 5-7 s a search at 4 clients
    instead of milliseconds (docs/performance.md)."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    tables = [
        model._meta.db_table
        for model in (Site, Device, DeviceSearch, SiteDeviceCount, SiteHealthCount, HealthCheck)
    ]
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE " + ", ".join(connection.ops.quote_name(t) for t in tables))


# --- PostgreSQL: one set-based statement per batch --------------------------------------------


def _case(expression: str, pairs, default: str = "NULL") -> str:
    """A SQL CASE over literal values from the shape constants above (no user input)."""
    whens = " ".join(f"WHEN {expression} {test} THEN '{value}'" for test, value in pairs)
    return f"CASE {whens} ELSE {default} END"


def _seen_ago_sql() -> str:
    whens = " ".join(
        f"WHEN '{status}' THEN %(now)s - make_interval(secs => {low} + jitter %% {spread})"
        for status, (low, spread) in LAST_SEEN_AGO.items()
    )
    return f"CASE status {whens} ELSE NULL END"


def _fleet_sql(with_health_checks: bool) -> str:
    site, device, check = Site._meta.db_table, Device._meta.db_table, HealthCheck._meta.db_table
    pos, reader, printer = DeviceType.POS_TERMINAL, DeviceType.CARD_READER, DeviceType.RECEIPT_PRINTER
    type_case = _case("r", [(f"< {POS_PER_BLOCK}", pos), (f"= {POS_PER_BLOCK}", reader)], f"'{printer}'")
    status_case = _case("roll", [(f"< {bound}", status) for bound, status in STATUS_ROLLS])
    label_case = _case("device_type", [(f"= '{t}'", label + " ") for t, (label, _) in TYPE_LABELS.items()])
    slug_case = _case("device_type", [(f"= '{t}'", slug) for t, (_, slug) in TYPE_LABELS.items()])
    pos_firmware = "ARRAY[" + ", ".join(f"'{v}'" for v in POS_FIRMWARE) + "]"
    firmware_case = _case(
        "device_type",
        [(f"= '{t}'", v) for t, v in OTHER_FIRMWARE.items()],
        f"({pos_firmware})[1 + jitter %% {len(POS_FIRMWARE)}]",
    )
    mac = " || ':' || ".join(f"substr(mac_hex, {i}, 2)" for i in range(1, 12, 2))
    health_case = _case("d.status", [(f"= '{s}'", h) for s, h in HEALTH_FOR_STATUS.items()])
    sql = f"""
WITH new_sites AS (
    INSERT INTO {site} (site_id, name, description, location, region, timezone, is_active,
                        created_at, updated_at)
    SELECT %(prefix)s || '-' || lpad(i::text, %(width)s, '0'),
           'Store Location ' || i,
           'Synthetic store #' || i || ' (create_fleet, prefix ' || %(prefix)s || ')',
           (100 + i %% 9900) || ' Main Street, City ' || i,
           (%(regions)s::text[])[1 + i %% %(n_regions)s],
           (%(timezones)s::text[])[1 + i %% %(n_timezones)s],
           true, %(now)s, %(now)s
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
    RETURNING id, site_id
),
slots AS (
    SELECT s.id AS site_pk, s.site_id, n.i, j,
           (n.i - 1) * %(per_site)s + (j - 1) AS g,
           (j - 1) %% 10 AS r,
           (j - 1) / 10 AS k
    FROM new_sites AS s
    CROSS JOIN LATERAL (SELECT right(s.site_id, %(width)s)::bigint AS i) AS n
    CROSS JOIN generate_series(1, %(per_site)s) AS j
),
typed AS (
    SELECT slots.*,
           {type_case} AS device_type,
           CASE WHEN r < {POS_PER_BLOCK} THEN k * {POS_PER_BLOCK} + r + 1 ELSE k + 1 END AS number,
           abs(hashint8extended(g, %(seed)s) %% 1000) AS roll,
           abs(hashint8extended(g, %(seed)s + 1) %% 1000000007) AS jitter,
           upper(lpad(to_hex(%(first_mac)s::bigint + g), 12, '0')) AS mac_hex
    FROM slots
),
rolled AS (
    SELECT typed.*, {status_case} AS status FROM typed
),
new_devices AS (
    INSERT INTO {device} (device_id, name, device_type, site_id, status, ip_address, mac_address,
                          firmware_version, config, last_seen, created_at, updated_at)
    SELECT site_id || '-' || {slug_case} || '-' || number,
           {label_case} || number,
           device_type, site_pk, status,
           %(first_ip)s::inet + (g %% {IP_SPAN}),
           {mac},
           {firmware_case},
           CASE WHEN device_type = '{pos}'
                THEN jsonb_build_object('gateway_url', %(gateway)s::text, 'store_id', site_id,
                                        'terminal_id', 'T' || i || '-' || lpad(number::text, 2, '0'))
                ELSE jsonb_build_object('paired_terminal', site_id || '-pos-terminal-1')
           END,
           {_seen_ago_sql()},
           %(now)s, %(now)s
    FROM rolled
    RETURNING id, status, firmware_version, last_seen
)"""  # noqa: S608 (built from this module's constants; every value is a bound parameter)
    if not with_health_checks:
        return sql + "\nSELECT count(*), 0 FROM new_devices"
    checks_sql = f""",
new_checks AS (
    INSERT INTO {check} (device_id, status, response_time_ms, metrics, error_message, checked_at)
    SELECT d.id, health, response_ms, metrics, error_message, checked_at
    FROM (
        SELECT d.id,
               {health_case} AS health,
               hashint8extended(d.id * 64 + c, %(seed)s) AS h,
               d.firmware_version,
               d.status,
               d.last_seen - (c - 1) * %(interval)s::interval AS checked_at
        FROM new_devices AS d
        CROSS JOIN generate_series(1, %(checks)s) AS c
        WHERE d.last_seen IS NOT NULL
    ) AS d
    CROSS JOIN LATERAL (
        SELECT
            CASE health WHEN 'healthy' THEN 40 + abs(h %% 140) WHEN 'degraded' THEN 400 + abs(h %% 800)
                        ELSE 2500 + abs(h %% 2500) END AS response_ms,
            jsonb_build_object(
                'cpu_percent', round((5 + abs(h %% 900) / 10.0)::numeric, 1),
                'memory_percent', round((30 + abs((h / 1000) %% 650) / 10.0)::numeric, 1),
                'disk_percent', round((20 + abs((h / 1000000) %% 700) / 10.0)::numeric, 1),
                'app_version', d.firmware_version
            ) AS metrics,
            CASE WHEN health = 'unhealthy' THEN %(health_error)s ELSE '' END AS error_message
    ) AS m
    RETURNING 1
)
SELECT (SELECT count(*) FROM new_devices), (SELECT count(*) FROM new_checks)"""  # noqa: S608 (as above)
    return sql + checks_sql


def _insert_batch_sql(plan: FleetPlan, first: int, last: int, using: str) -> tuple[int, int]:
    params = {
        "prefix": plan.prefix,
        "width": plan.width,
        "per_site": plan.devices_per_site,
        "seed": plan.seed,
        "first_mac": plan.first_mac,
        "first_ip": FIRST_IP,
        "gateway": GATEWAY_URL,
        "regions": list(REGIONS),
        "n_regions": len(REGIONS),
        "timezones": list(TIMEZONES),
        "n_timezones": len(TIMEZONES),
        "now": plan.now,
        "first": first,
        "last": last,
        "checks": plan.health_checks_per_device,
        "interval": HEALTH_CHECK_INTERVAL,
        "health_error": HEALTH_ERROR,
    }
    with connections[using].cursor() as cursor:
        cursor.execute(_fleet_sql(plan.health_checks_per_device > 0), params)
        devices, checks = cursor.fetchone()
    return devices, checks


# --- Other databases: the same fleet through bulk_create ---------------------------------------


def device_slot(plan: FleetPlan, site_number: int, position: int) -> tuple[str, int, int]:
    """(device type, number within its type at the site, fleet-wide ordinal) of slot
    `position` (1-based) at site `site_number` (1-based): the rule the SQL path follows."""
    block, r = divmod(position - 1, 10)
    ordinal = (site_number - 1) * plan.devices_per_site + position - 1
    if r < POS_PER_BLOCK:
        return DeviceType.POS_TERMINAL, block * POS_PER_BLOCK + r + 1, ordinal
    if r == POS_PER_BLOCK:
        return DeviceType.CARD_READER, block + 1, ordinal
    return DeviceType.RECEIPT_PRINTER, block + 1, ordinal


def _roll_status(roll: int) -> str:
    return next(status for bound, status in STATUS_ROLLS if roll < bound)


def _ip_text(ordinal: int) -> str:
    return str(ipaddress.IPv4Address(FIRST_IP) + ordinal % IP_SPAN)


def _insert_batch_orm(plan: FleetPlan, first: int, last: int, using: str) -> tuple[int, int]:
    rng = random.Random(f"{plan.seed}:{first}")
    new_sites = [
        Site(
            site_id=plan.site_id(n),
            name=f"Store Location {n}",
            description=f"Synthetic store #{n} (create_fleet, prefix {plan.prefix})",
            location=f"{100 + n % 9900} Main Street, City {n}",
            region=REGIONS[n % len(REGIONS)],
            timezone=TIMEZONES[n % len(TIMEZONES)],
            created_at=plan.now,
            updated_at=plan.now,
        )
        for n in range(first, last + 1)
    ]
    Site.objects.using(using).bulk_create(new_sites)
    # A range, not an IN list: zero-padded ids sort in number order, and a batch may hold
    # more sites than SQLite accepts query parameters.
    site_pks = dict(
        Site.objects.using(using)
        .filter(site_id__gte=plan.site_id(first), site_id__lte=plan.site_id(last))
        .values_list("site_id", "pk")
    )
    devices = []
    for n in range(first, last + 1):
        site_id = plan.site_id(n)
        for position in range(1, plan.devices_per_site + 1):
            devices.append(_device(plan, rng, site_id, site_pks[site_id], n, position))
    Device.objects.using(using).bulk_create(devices, batch_size=2_000)
    checks = 0
    if plan.health_checks_per_device:
        checks = _insert_checks_orm(plan, rng, sorted(site_pks.values()), using)
    return len(devices), checks


def _device(plan: FleetPlan, rng: random.Random, site_id: str, site_pk: int, n: int, position: int):
    device_type, number, ordinal = device_slot(plan, n, position)
    label, slug = TYPE_LABELS[device_type]
    status = _roll_status(rng.randrange(1000))
    seen = LAST_SEEN_AGO.get(status)
    if device_type == DeviceType.POS_TERMINAL:
        firmware = rng.choice(POS_FIRMWARE)
        config = {"gateway_url": GATEWAY_URL, "store_id": site_id, "terminal_id": f"T{n}-{number:02d}"}
    else:
        firmware = OTHER_FIRMWARE[device_type]
        config = {"paired_terminal": f"{site_id}-pos-terminal-1"}
    return Device(
        device_id=f"{site_id}-{slug}-{number}",
        name=f"{label} {number}",
        device_type=device_type,
        site_id=site_pk,
        status=status,
        ip_address=_ip_text(ordinal),
        mac_address=mac_text(plan.first_mac + ordinal),
        firmware_version=firmware,
        config=config,
        last_seen=plan.now - timedelta(seconds=seen[0] + rng.randrange(seen[1])) if seen else None,
        created_at=plan.now,
        updated_at=plan.now,
    )


def _history_days_ensure(plan: FleetPlan) -> None:
    """The history has no DEFAULT partition: the days the generated checks fall in (back to
    the longest LAST_SEEN_AGO and the checks before it) get theirs first."""
    oldest_seen = max(low + spread for low, spread in LAST_SEEN_AGO.values())
    oldest = plan.now - timedelta(seconds=oldest_seen) - plan.health_checks_per_device * HEALTH_CHECK_INTERVAL
    first, last = oldest.astimezone(UTC).date(), plan.now.astimezone(UTC).date()
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    partitions.history_days_ensure(partitions.HEALTH, days)


def _insert_checks_orm(plan: FleetPlan, rng: random.Random, site_pks: list[int], using: str) -> int:
    checks = []
    rows = Device.objects.using(using).filter(
        site_id__gte=site_pks[0], site_id__lte=site_pks[-1], last_seen__isnull=False
    )
    for pk, status, firmware, last_seen in rows.values_list("pk", "status", "firmware_version", "last_seen"):
        health = HEALTH_FOR_STATUS[status]
        for c in range(plan.health_checks_per_device):
            checks.append(
                HealthCheck(
                    device_id=pk,
                    status=health,
                    response_time_ms={"healthy": 40, "degraded": 400}.get(health, 2500) + rng.randrange(800),
                    metrics={
                        "cpu_percent": round(rng.uniform(5, 95), 1),
                        "memory_percent": round(rng.uniform(30, 95), 1),
                        "disk_percent": round(rng.uniform(20, 90), 1),
                        "app_version": firmware,
                    },
                    error_message=HEALTH_ERROR if health == HealthStatus.UNHEALTHY else "",
                    checked_at=last_seen - c * HEALTH_CHECK_INTERVAL,
                )
            )
    HealthCheck.objects.using(using).bulk_create(checks, batch_size=2_000)
    return len(checks)
