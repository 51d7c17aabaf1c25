"""Reads of the sites app. Every read is scoped with the one rule, `for_user`."""

from django.conf import settings
from django.db.models import Case, Count, IntegerField, Q, QuerySet, Value, When

from accounts.scoping import scoped_site_ids
from devices_app.choices import DeviceStatus
from homepot.compiled_sql import RowByUniqueColumn
from monitoring_app.choices import HealthStatus, SiteHealthStatus
from sites_app.models import Site

# Internal ids are PostgreSQL bigints; a larger number can match nothing (and must not
# reach the database as an out-of-range parameter).
_MAX_ID = 2**63 - 1


def site_list(*, user) -> QuerySet[Site]:
    """The sites `user` may see. Filter, order and paginate it, then `attach_health` to the
    page: the health of the sites shown is counted, not of every site the user has."""
    return Site.objects.for_user(user)


def attach_health(sites: list[Site]) -> list[Site]:
    """Give each site its `device_count` and health counts (what `site_health` reads), from
    ONE GROUP BY over the devices of these sites (a page of a list, or one site)."""
    from devices_app.models import Device

    counted = {
        row.pop("site_id"): row
        for row in health_counts_per_site(Device.objects.filter(site_id__in=[site.pk for site in sites]))
    }
    none = dict.fromkeys(health_counts(), 0)
    for site in sites:
        counts = counted.get(site.pk, none)
        for name, value in counts.items():
            setattr(site, name, value)
        site.device_count = counts["health_total"]
    return sites


# --- Site health ---------------------------------------------------------------------------
# Devices in maintenance (an operator's choice) and never heard from (`unknown`) are not
# monitored: they count in `total` but in neither online nor offline.
_NOT_MONITORED = (DeviceStatus.MAINTENANCE, DeviceStatus.UNKNOWN)
_BAD_HEALTH = (HealthStatus.DEGRADED, HealthStatus.UNHEALTHY)


def health_counts() -> dict:
    """Aggregates over devices that one GROUP BY computes: total, online, offline,
    maintenance, and the health of online devices (an online device without a report yet
    counts as healthy)."""
    online = Q(status=DeviceStatus.ONLINE)
    return {
        "health_total": Count("pk"),
        "health_online": Count("pk", filter=online),
        "health_offline": Count("pk", filter=~Q(status__in=[*_NOT_MONITORED, DeviceStatus.ONLINE])),
        "health_maintenance": Count("pk", filter=Q(status=DeviceStatus.MAINTENANCE)),
        "health_healthy": Count("pk", filter=online & ~Q(health_status__in=_BAD_HEALTH)),
        "health_degraded": Count("pk", filter=online & Q(health_status=HealthStatus.DEGRADED)),
        "health_unhealthy": Count("pk", filter=online & Q(health_status=HealthStatus.UNHEALTHY)),
    }


def health_counts_per_site(devices: QuerySet) -> QuerySet:
    """One row per site of `devices`: its `site_id` and the health_counts, from ONE GROUP BY."""
    return devices.order_by().values("site_id").annotate(**health_counts())


def health_summary(counts: dict) -> dict:
    """The health answer for one site or many, from health_counts' numbers (no query).

    `health_percentage`: healthy share of the monitored devices (None when none is
    monitored). `status`: down when no monitored device is online or the offline share
    reaches the site-outage fraction; degraded when anything is offline or not healthy;
    healthy otherwise.
    """
    total, online, offline = counts["health_total"], counts["health_online"], counts["health_offline"]
    healthy, degraded, unhealthy = (
        counts["health_healthy"],
        counts["health_degraded"],
        counts["health_unhealthy"],
    )
    monitored = online + offline
    if monitored and (online == 0 or offline >= settings.HOMEPOT_MONITORING_SITE_OUTAGE_FRACTION * monitored):
        status = SiteHealthStatus.DOWN
    elif offline or degraded or unhealthy:
        status = SiteHealthStatus.DEGRADED
    else:
        status = SiteHealthStatus.HEALTHY
    return {
        "total": total,
        "online": online,
        "offline": offline,
        "maintenance": counts["health_maintenance"],
        "healthy": healthy,
        "degraded": degraded,
        "unhealthy": unhealthy,
        "health_percentage": round(100.0 * healthy / monitored, 1) if monitored else None,
        "status": status.value,
    }


def site_health(site: Site) -> dict:
    """One site's health summary, from the annotations site_list put on it."""
    return health_summary({name: getattr(site, name) for name in health_counts()})


def _internal_id(reference) -> int | None:
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int):
        value = reference
    elif isinstance(reference, str) and reference.isascii() and reference.isdigit():
        value = int(reference)
    else:
        return None
    return value if 0 < value <= _MAX_ID else None


def sites_by_reference(reference: int | str, queryset: QuerySet[Site] | None = None) -> QuerySet[Site]:
    """Sites named by `reference`: a JSON number is the internal id (as the guide's
    `"site_id": 3`); a string is the business id (`"site-003"`), or, when it is all digits
    and no site has that business id, the internal id. Best match first; at most one row
    is wanted, so callers slice `[:1]`."""
    queryset = Site.objects.all() if queryset is None else queryset
    internal_id = _internal_id(reference)
    if isinstance(reference, int):
        return queryset.filter(pk=internal_id) if internal_id else queryset.none()
    if not isinstance(reference, str) or "\x00" in reference:
        return queryset.none()
    if internal_id is None:
        return queryset.filter(site_id=reference)
    business_id_first = Case(
        When(site_id=reference, then=Value(0)), default=Value(1), output_field=IntegerField()
    )
    return queryset.filter(Q(site_id=reference) | Q(pk=internal_id)).order_by(business_id_first)


def site_for_reference(*, user, reference: int | str, action: str = "change") -> Site | None:
    """The site `reference` names among those `user` may `action`, or None.

    Unknown and out-of-scope sites look the same to the caller, so a reference never
    reveals that another operator's site exists.
    """
    if (
        isinstance(reference, str)
        and _internal_id(reference) is None
        and "\x00" not in reference
        and user is not None
        and scoped_site_ids(user, action) is None
    ):
        # An admin naming a site by its business id (the API's usual request): one indexed
        # lookup from SQL written once, the same row the queryset below would find.
        return _SITE_BY_SITE_ID.get(reference)
    return sites_by_reference(reference, Site.objects.for_user(user, action)).first()


_SITE_BY_SITE_ID = RowByUniqueColumn(Site, "site_id")


SITE_HEALTH_DEVICES_LIMIT = 500


def site_health_devices(site: Site, limit: int = SITE_HEALTH_DEVICES_LIMIT) -> tuple[list[dict], bool]:
    """The site's devices, worst first (offline, then unhealthy, degraded, the rest), at most
    `limit` of them, and whether there were more. One query (served by the site indexes)."""
    from devices_app.models import Device

    rank = Case(
        When(status__in=[DeviceStatus.OFFLINE, DeviceStatus.ERROR], then=Value(0)),
        When(health_status=HealthStatus.UNHEALTHY, then=Value(1)),
        When(health_status=HealthStatus.DEGRADED, then=Value(2)),
        default=Value(3),
        output_field=IntegerField(),
    )
    rows = list(
        Device.objects.filter(site=site)
        .annotate(rank=rank)
        .order_by("rank", "device_id")
        .values(
            "device_id",
            "name",
            "device_type",
            "status",
            "health_status",
            "last_seen",
            "last_health_at",
            "connectivity_changed_at",
        )[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


# The columns of a site export, in order; the import reads the same file back.
SITE_EXPORT_COLUMNS = [
    "site_id",
    "name",
    "description",
    "location",
    "region",
    "timezone",
    "is_active",
    "created_at",
]


def site_export_rows(queryset: QuerySet[Site]):
    """The rows of `queryset` (already scoped and filtered) for a CSV export, read lazily in
    keyset batches by site_id (unique); nothing runs until iterated."""
    from homepot.csv_export import keyset_rows

    for row in keyset_rows(queryset, key="site_id", fields=SITE_EXPORT_COLUMNS):
        yield [
            value.isoformat()
            if hasattr(value, "isoformat")
            else str(value).lower()
            if isinstance(value, bool)
            else value
            for value in row
        ]


def site_maintenance(site: Site) -> dict:
    """The site's maintenance schedule, whether a window is open now and when the next one
    opens (two small queries and one next-opening statement; PostgreSQL only for the last
    two, None elsewhere)."""
    from django.db import connection

    from sites_app import windows

    body = {
        "timezone": site.timezone,
        "maintenance_windows": list(site.maintenance_windows.order_by("weekday", "starts")),
        "blackouts": list(site.blackouts.order_by("starts_on", "ends_on")),
        "open_now": None,
        "next_opening": None,
    }
    if connection.vendor == "postgresql":
        at = windows.now()
        body["next_opening"] = windows.next_openings([site.pk], at).get(site.pk)
        body["open_now"] = body["next_opening"] == at
    return body
