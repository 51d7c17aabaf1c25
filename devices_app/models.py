import hashlib

from django.conf import settings
from django.db import models
from django.db.models.functions import Cast, NullIf
from django.utils import timezone

from accounts.scoping import ScopedQuerySet
from devices_app.choices import DeviceStatus, DeviceType, PushChannel
from devices_app.fields import MACAddressField
from monitoring_app.choices import HealthStatus
from sites_app.validators import business_id_validator


class DeviceQuerySet(ScopedQuerySet):
    scope_path = "site"

    def online(self):
        return self.with_status(DeviceStatus.ONLINE)

    def with_status(self, status: str):
        """The devices in `status`, found without an index on status (there is none: see
        Device.Meta.indexes). The rows are exactly those of `filter(status=status)`; only
        the way PostgreSQL finds them differs. A status held by at least COMMON_STATUS_SHARE
        of the fleet is checked on the rows in the list's own order (a page finds its rows
        soon). A rarer one: the per-site rollup (SiteDeviceCount, exact in every
        transaction) names the sites that have such devices, and only those sites' rows are
        read, through the (site, ...) index: a few hundred devices in error cost the rows of
        their sites, not a walk of the fleet."""
        from django.db import connection

        matching = self.filter(status=status)
        if connection.vendor != "postgresql":
            return matching  # no rollup trigger on SQLite
        if _status_share(status) >= COMMON_STATUS_SHARE:
            return matching
        sites = SiteDeviceCount.objects.filter(status=status, devices__gt=0).values("site_id")
        return matching.filter(site_id__in=sites)


# A status held by at least this share of the fleet is filtered on the rows as they come in
# the list's order (id, device ID): a page of 50 finds its rows within 50 / share rows
# (50,000 at 0.1 %) when they are spread out. Naming the sites costs the rows of every site
# named: the admin's page 100 of `online` at 1,000,000 devices read 1,127,540 buffers in
# 22 s that way, `offline` at 5 % (1,020 stores) 58,586 buffers against 158-989 in list order
# (docs/performance.md, "hot"). Below it (a few hundred devices in error) the sites are few.
COMMON_STATUS_SHARE = 0.001


def _status_share(status: str) -> float:
    """The planner statistics' share of devices in `status` (ANALYZE's sample; the sweep
    refreshes it after a mass change), 0 when unknown. Only chooses how the rows are found,
    never which: both ways answer the same devices."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT most_common_freqs[array_position(most_common_vals::text::text[], %s)]
               FROM pg_stats WHERE tablename = 'devices_app_device' AND attname = 'status'
                 AND schemaname = current_schema()""",
            [status],
        )
        row = cursor.fetchone()
    return (row and row[0]) or 0.0


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
    # No index of its own: the (site, ...) indexes below start with it and serve every lookup
    # by site (PROTECT's check too); one index fewer to enter on every non-HOT row update.
    site = models.ForeignKey(
        "sites_app.Site", on_delete=models.PROTECT, related_name="devices", db_index=False
    )
    status = models.CharField(max_length=16, choices=DeviceStatus.choices, default=DeviceStatus.UNKNOWN)
    ip_address = models.GenericIPAddressField("IP address", null=True, blank=True)
    mac_address = MACAddressField(
        "MAC address", null=True, blank=True, help_text="Stored as 00:1B:44:11:3A:B9."
    )
    firmware_version = models.CharField(max_length=64, blank=True)
    config = models.JSONField(default=dict, blank=True)
    push_channel = models.CharField(
        max_length=8,
        choices=PushChannel.choices,
        default=PushChannel.POLL,
        db_default=PushChannel.POLL,  # also for set-based inserts that name no value
        help_text="How jobs reach the device: it polls the agent API (works behind NAT) or listens on MQTT.",
    )
    last_seen = models.DateTimeField(null=True, blank=True, help_text="Server time of the last report.")
    # The latest state reported by the device (history lives in monitoring_app.HealthCheck).
    # db_default: the set-based INSERTs of devices_app.bulk name explicit columns.
    health_status = models.CharField(
        max_length=16,
        choices=HealthStatus.choices,
        blank=True,
        default="",
        db_default="",
        help_text="Latest reported health; empty until the first health report.",
    )
    health_changed_at = models.DateTimeField(null=True, blank=True, help_text="When the health last changed.")
    last_health_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When the latest health (the one shown) was measured: the report's time.",
    )
    connectivity_changed_at = models.DateTimeField(
        null=True, blank=True, help_text="When the status last moved between online and offline."
    )
    reported_at = models.DateTimeField(
        null=True, blank=True, help_text="The device's own clock at its last report (kept, never trusted)."
    )
    app_version = models.CharField(max_length=64, blank=True, default="", db_default="")
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
            models.CheckConstraint(
                condition=models.Q(push_channel__in=PushChannel.values), name="devices_push_channel_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(health_status__in=["", *HealthStatus.values]),
                name="devices_health_status_valid",
            ),
            models.UniqueConstraint(
                fields=["mac_address"],
                condition=models.Q(mac_address__isnull=False),
                name="devices_mac_address_unique",
                violation_error_message="Another device already has this MAC address.",
            ),
        ]
        # Each list filter has an index; the trailing id serves the cursor pagination order.
        # None is kept that another one's leading columns already serve: a site's own filter
        # (status, type, health) reads the site's few hundred rows at most through any
        # (site, ...) index.
        # `status` and `connectivity_changed_at` are in NO index (nor in an index's WHERE),
        # so the sweep's mass status change is a HOT update: the new row version goes on the
        # same page (the table's fillfactor leaves room, migration 0011) and no index gets an
        # entry (6.05 WAL records per moved device instead of 15.1, docs/performance.md, "hot").
        # Readers by status go through DeviceQuerySet.with_status (the per-site rollup names
        # the sites, then those sites' rows through (site, device_type, id)).
        indexes = [
            models.Index(fields=["site", "device_type", "id"], name="devices_site_type"),
            models.Index(fields=["device_type", "id"], name="devices_type"),
            # The last_seen filter and ordering, and the sweep's candidates (online devices
            # last seen before the cutoff; the status is read from the row).
            models.Index(fields=["last_seen"], name="devices_last_seen"),
            # "Which terminals are unhealthy", fleet-wide and per site.
            models.Index(fields=["health_status", "id"], name="devices_health"),
            # No search index here: the search reads DeviceSearch (below), so the sweep's and
            # the heartbeats' mass UPDATEs of status and last_seen do not enter GIN indexes.
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.device_id})"


class DeviceCredential(models.Model):
    """The secret a device authenticates with as itself. Only its SHA-256 is stored.

    A device has at most one usable credential: issuing a new one revokes the old. The
    secret is high-entropy, so an indexed hash lookup is safe (no per-request bcrypt).
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="credentials")
    key_prefix = models.CharField(max_length=12, help_text="First characters, to recognise a credential.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["device"],
                condition=models.Q(revoked_at__isnull=True),
                name="devices_one_active_credential",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key_prefix}… ({self.device_id})"

    @staticmethod
    def hash_key(raw_key: str) -> str:
        return hashlib.sha256(raw_key.encode()).hexdigest()


class SiteDeviceCountQuerySet(ScopedQuerySet):
    scope_path = "site"


class SiteDeviceCount(models.Model):
    """How many of a site's devices have each (status, health_status): the rollup the fleet
    summary, the dashboards and the site lists read instead of counting a million devices.

    Kept by PostgreSQL itself (migration 0005: statement-level triggers on the device table
    with transition tables), so every writer (services, the sweep, ingest, create_fleet,
    imports, raw SQL) keeps it exact in the same transaction, one set-based upsert per
    statement. Never written by application code; `device_counts_rebuild` recounts it.
    On SQLite there is no trigger and the readers count the devices instead.
    """

    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16)
    health_status = models.CharField(max_length=16, blank=True)
    devices = models.BigIntegerField()
    # "Since when": of the devices counted here, how many have no connectivity_changed_at
    # (exact), and a time no later than which every other one's connectivity_changed_at lies
    # (an upper bound: raised as devices arrive, never lowered as they leave). The alert
    # evaluation's site-outage rule reads them to know that all of a store's offline devices
    # went dark before the threshold without reading the store's devices (migration 0012).
    undated = models.BigIntegerField(db_default=0)
    changed_max = models.DateTimeField(null=True, blank=True)

    objects = SiteDeviceCountQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["site", "status", "health_status"], name="devices_count_one_per_state"
            ),
        ]
        # The sites with devices in a status (DeviceQuerySet.with_status, the alert rules),
        # without scanning every site's rows (1,361 buffers at 20,000 sites).
        indexes = [
            models.Index(
                fields=["status", "site"],
                condition=models.Q(devices__gt=0),
                name="devices_count_status_sites",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.status}/{self.health_status or '-'}: {self.devices}"


class DeviceSearch(models.Model):
    """The columns the console's search matches, one row per device, in a narrow table of its
    own that carries the search's indexes (trigram GIN on UPPER(device ID) and UPPER(name), IP,
    MAC, site): a device's status and last_seen change all the time and those UPDATEs are not
    HOT (status is indexed), so on the device row every one of them would also write to the
    GIN indexes (+2.3 s for a sweep of 51,000 devices). These columns change rarely.

    Kept by PostgreSQL itself (migration 0007: triggers on the device table), so every writer
    (services, the admin, imports, create_fleet's set-based INSERTs, raw SQL) keeps it exact in
    the same transaction: a statement-level trigger per INSERT and DELETE statement, a row
    trigger on UPDATE OF these columns only (the sweep's UPDATE never fires it). Never written
    by application code. On SQLite there is no trigger; the search reads the devices instead.
    No foreign-key constraints: the triggers keep the rows paired, and a constraint would add
    a check per row to a million-device insert.
    """

    device = models.OneToOneField(
        Device,
        primary_key=True,
        on_delete=models.DO_NOTHING,  # the delete trigger removes the row
        db_constraint=False,
        related_name="search",
    )
    site = models.ForeignKey(
        "sites_app.Site", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    device_key = models.CharField("device ID", max_length=64)
    name = models.CharField(max_length=200)
    ip_address = models.GenericIPAddressField("IP address", null=True, blank=True)
    mac_address = MACAddressField("MAC address", null=True, blank=True)

    class Meta:
        # The trigram GIN indexes on UPPER(device_key) and UPPER(name) are PostgreSQL only
        # (migration 0007). The site arm uses the site_id index of the foreign key.
        indexes = [
            models.Index(fields=["ip_address"], name="devices_search_ip"),
            models.Index(fields=["mac_address"], name="devices_search_mac"),
        ]

    def __str__(self) -> str:
        return f"{self.device_key}: {self.name}"


class SiteHealthCountQuerySet(ScopedQuerySet):
    scope_path = "site"


# Site health's counts (sites_app.selectors.health_counts), one column each, plus errors.
SITE_HEALTH_COUNTS = (
    "total",
    "online",
    "offline",
    "maintenance",
    "healthy",
    "degraded",
    "unhealthy",
    "error",
)


class SiteHealthCount(models.Model):
    """One row per site with its devices counted by site health's rule (`offline` is every
    monitored device not online, errors included; `healthy`, `degraded` and `unhealthy`
    count online devices only; `error` is the part of `offline` in error): what the fleet
    summary and the dashboards read, so "the sites in trouble" and "sites down" are an index
    range over this table instead of a GROUP BY over the rollup of every site.

    Kept by the same PostgreSQL triggers as SiteDeviceCount (migration 0008), in the same
    statement, so both are exact in every transaction. Never written by application code.
    `offline_share` (offline / monitored, NULL when nothing is monitored) is computed by
    PostgreSQL: a site is down when it reaches the outage fraction, so the down sites are
    the top of its index whatever the fraction is set to.
    """

    site = models.OneToOneField(
        "sites_app.Site", on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    total = models.BigIntegerField(default=0)
    online = models.BigIntegerField(default=0)
    offline = models.BigIntegerField(default=0)
    maintenance = models.BigIntegerField(default=0)
    healthy = models.BigIntegerField(default=0)
    degraded = models.BigIntegerField(default=0)
    unhealthy = models.BigIntegerField(default=0)
    error = models.BigIntegerField(default=0)
    offline_share = models.GeneratedField(
        expression=Cast("offline", models.FloatField())
        / NullIf(Cast(models.F("online") + models.F("offline"), models.FloatField()), models.Value(0.0)),
        output_field=models.FloatField(),
        db_persist=True,
    )

    objects = SiteHealthCountQuerySet.as_manager()

    class Meta:
        indexes = [
            # Sites down: the top of this index (offline share at or above the fraction).
            models.Index(fields=["-offline_share", "site"], name="devices_sitehealth_share"),
            # The other sites in trouble, worst first (fleet_summary's order).
            models.Index(
                fields=["-offline", "-unhealthy", "-degraded", "site"],
                name="devices_sitehealth_trouble",
                condition=models.Q(offline__gt=0) | models.Q(degraded__gt=0) | models.Q(unhealthy__gt=0),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.site_id}: {self.online}/{self.total} online"
