"""Reads of the devices app. Every read is scoped with the one rule, `for_user`."""

import contextlib
import json

from django.conf import settings
from django.db import connections
from django.db.models import JSONField, QuerySet

from accounts.scoping import scoped_site_ids
from devices_app.models import Device
from homepot.compiled_sql import RowByUniqueColumn, compiled
from homepot.db import prepared
from homepot.db_functions import UtcIsoText

_DEVICE_BY_DEVICE_ID = RowByUniqueColumn(Device, "device_id")


def device_for_user(user, device_id: str, action: str = "view") -> Device | None:
    """The device `device_id` names among those `user` may `action`, or None: an unknown
    device and another operator's look the same to the caller."""
    if "\x00" not in device_id and scoped_site_ids(user, action) is None:
        # An admin (the usual caller of a device's pages): one indexed lookup from SQL
        # written once, the row the queryset below finds, without the ORM compiling it.
        return _DEVICE_BY_DEVICE_ID.get(device_id)
    return Device.objects.for_user(user, action).filter(device_id=device_id).first()


def device_list(*, user) -> QuerySet[Device]:
    """The devices `user` may see, with their site (one query per page, however long)."""
    return Device.objects.for_user(user).select_related("site")


# What a page of the API's device list shows (devices_app.api.serializers.DeviceSerializer):
# a device row has twice as many columns (health, connectivity, reports), most of them
# timestamps, and reading and parsing the unshown ones was a third of a page's CPU.
DEVICE_PAGE_COLUMNS = (
    "id",
    "device_id",
    "name",
    "device_type",
    "site_id",
    "status",
    "ip_address",
    "mac_address",
    "firmware_version",
    "config",
    "push_channel",
    "last_seen",
    "created_at",
    "updated_at",
    "site__id",
    "site__site_id",
    "site__name",
)


def device_page(*, user) -> QuerySet[Device]:
    """device_list with only the columns a page of the API's list shows."""
    return device_list(user=user).only(*DEVICE_PAGE_COLUMNS)


def device_page_rows(queryset: QuerySet[Device], *, times_as_utc_text: bool = False) -> QuerySet:
    """`queryset` (scoped, filtered, ordered) as plain rows of the page's columns, keyed as
    in DEVICE_PAGE_COLUMNS: no model instance per device (a fifth of a page's CPU).

    With `times_as_utc_text`, the page's times come as `<name>_utc_text` instead: the API's
    ISO 8601 text of the time in UTC, written by PostgreSQL. Parsing three timestamps per
    device into datetimes only to format them back was a fifth of a page's CPU."""
    names = [name for name in DEVICE_PAGE_COLUMNS if name != "site__id"]
    if not times_as_utc_text:
        return queryset.values(*names)
    plain = [name for name in names if name not in DEVICE_PAGE_TIMES]
    return queryset.values(*plain, **{f"{name}_utc_text": UtcIsoText(name) for name in DEVICE_PAGE_TIMES})


DEVICE_PAGE_TIMES = ("last_seen", "created_at", "updated_at")


def device_page_after(*, user, after: int | None, limit: int) -> list[dict]:
    """Up to `limit` rows of the API list in id order, after id `after` (None: from the
    first), for `user`: the rows `device_page_rows(device_page(user=user), times_as_utc_text=True)`
    gives (the scope is `for_user`'s), read without building the queryset on each call.

    The statement is the ORM's own, compiled from that queryset. For a user who sees every
    site (`scoped_site_ids` answers None: the SQL names no user) and the default page size,
    it is compiled once per process and only executed afterwards: building and compiling it
    was a fifth of the list's first page's CPU (docs/performance.md, list3); and it runs as a
    statement prepared once per database connection (homepot.db.prepared), which spares
    PostgreSQL its planning (docs/performance.md, list4). Anyone else's is compiled for
    their request, as the DRF view's is (its text names their sites)."""
    cacheable = limit == settings.REST_FRAMEWORK["PAGE_SIZE"] + 1 and scoped_site_ids(user, "view") is None
    if cacheable:
        key = ("devices_app.device_page_after", "every site", after is None, limit)
        plan = compiled(key, Device.objects.db, lambda _connection: _PagePlan(user, after, limit, fixed=True))
    else:
        plan = _PagePlan(user, after, limit, fixed=False)
    return plan.rows(after)


_POSITION_STAND_IN = -(2**63) + 12345  # a bigint no real cursor names, to find its parameter


class _PagePlan:
    """The compiled statement of one device_page_after, its column names and the ORM's
    converters; `rows(after)` executes it with another position, on the calling thread's
    connection (a plan is shared by the threads of a process). A `fixed` plan (its text the
    same for every user it serves) is executed as a prepared statement."""

    def __init__(self, user, after, limit, *, fixed: bool):
        self.fixed = fixed
        queryset = device_page(user=user).order_by("id")
        if after is not None:
            queryset = queryset.filter(id__gt=_POSITION_STAND_IN)
        query = device_page_rows(queryset, times_as_utc_text=True)[:limit].query
        self.using = Device.objects.db
        compiler = query.get_compiler(self.using)
        self.sql, params = compiler.as_sql()
        self.params = list(params)
        self.position_index = None
        if after is not None:
            found = [i for i, value in enumerate(self.params) if value == _POSITION_STAND_IN]
            if len(found) != 1:
                raise RuntimeError("the page's position is not one parameter of its statement")
            self.position_index = found[0]
        # ValuesIterable's names for the columns, in order.
        self.names = list(query.selected or [*query.values_select, *query.annotation_select])
        selected = [column[0] for column in compiler.select[: compiler.col_count]]
        self.converters = [
            (self.names[position], _column_conversion(steps, expression))
            for position, (steps, expression) in compiler.get_converters(selected).items()
        ]

    def rows(self, after) -> list[dict]:
        params = self.params
        if self.position_index is not None:
            params = list(params)
            params[self.position_index] = after
        connection = connections[self.using]
        with connection.cursor() as cursor:
            if self.fixed:
                prepared.execute(cursor, self.sql, params)  # planned once per connection
            else:
                cursor.execute(self.sql, params)
            raw_rows = cursor.fetchall()
        names = self.names
        rows = [dict(zip(names, raw, strict=True)) for raw in raw_rows]
        for name, convert in self.converters:
            for row in rows:
                row[name] = convert(row[name], connection)
        return rows


_JSON_SCAN = json.JSONDecoder().scan_once  # what json.loads runs, without its wrappers


def _column_conversion(steps, expression):
    """`convert(value, connection)`: the ORM's converters of one column, in order. A JSON
    column with the default decoder (the page's `config`) is read by json's own scanner, as
    json.loads reads it, minus the Python around it (five sixths of the conversion's time,
    which was a fifth of the page's CPU: docs/performance.md, list4); anything that scanner
    does not consume whole goes through the ORM's converter."""
    field = getattr(expression, "output_field", None)
    if isinstance(field, JSONField) and field.decoder is None and steps == [field.from_db_value]:

        def json_value(value, connection):
            if value is None:
                return None
            try:
                parsed, end = _JSON_SCAN(value, 0)
            except (StopIteration, ValueError, TypeError):
                end = -1
            return parsed if end == len(value) else field.from_db_value(value, expression, connection)

        return json_value

    def converted(value, connection):
        for step in steps:
            value = step(value, expression, connection)
        return value

    return converted


# The columns of a device export, in order; the import reads the same file back (it uses
# the columns it knows and ignores the read-only ones: status, health, times).
DEVICE_EXPORT_COLUMNS = {
    "device_id": "device_id",
    "name": "name",
    "device_type": "device_type",
    "site_id": "site__site_id",
    "ip_address": "ip_address",
    "mac_address": "mac_address",
    "firmware_version": "firmware_version",
    "push_channel": "push_channel",
    "status": "status",
    "health_status": "health_status",
    "last_seen": "last_seen",
    "created_at": "created_at",
}


def device_export_rows(queryset: QuerySet[Device]):
    """The rows of `queryset` (already scoped and filtered) for a CSV export, read lazily in
    keyset batches by id (the list's indexes end with id); nothing runs until iterated."""
    from homepot.csv_export import keyset_rows

    for row in keyset_rows(queryset, key="id", fields=list(DEVICE_EXPORT_COLUMNS.values())):
        yield [value.isoformat() if hasattr(value, "isoformat") else value for value in row]


# --- The console's device search ----------------------------------------------------------

# Below this length a word is matched as a prefix: a trigram index cannot narrow "%ab%".
SUBSTRING_FROM = 3


def _ip_range(word: str) -> tuple[str, str] | None:
    """An IPv4 address or its first whole octets ("10.2.0", "10.2.0.") as the lowest and
    highest address they cover; an IPv6 address as itself; None for anything else."""
    import ipaddress

    try:
        address = ipaddress.ip_address(word)
        return str(address), str(address)
    except ValueError:
        pass
    octets = word.rstrip(".").split(".")
    if not 1 <= len(octets) <= 3 or not all(o.isdigit() and len(o) <= 3 and int(o) <= 255 for o in octets):
        return None
    if len(octets) == 1 and not word.endswith("."):
        return None  # a bare number is an id or a name, not a network
    missing = 4 - len(octets)
    return ".".join(octets + ["0"] * missing), ".".join(octets + ["255"] * missing)


def _searched_columns() -> dict[str, str]:
    """Where each searched column is read: the DeviceSearch side table on PostgreSQL (its
    triggers keep it, its indexes serve every arm), the device row itself on SQLite."""
    from django.db import connection

    if connection.vendor == "postgresql":
        return {
            "device_id": "search__device_key",
            "name": "search__name",
            "mac_address": "search__mac_address",
            "ip_address": "search__ip_address",
            "site": "search__site",
        }
    return {name: name for name in ("device_id", "name", "mac_address", "ip_address", "site")}


def _word_matches(word: str):
    """What one search word matches, each arm served by an index of the DeviceSearch side
    table (so PostgreSQL ORs bitmap index scans over that narrow table and joins the hits to
    their devices by primary key, never walking the fleet): device ID and name (substring
    from SUBSTRING_FROM characters, prefix below: trigram GIN on UPPER(column)), the exact
    MAC address in any spelling, an IP address or octet prefix (as a range), the exact site
    ID (one site's devices)."""
    from django.core.exceptions import ValidationError
    from django.db.models import Q, Subquery

    from devices_app.validators import normalize_mac
    from sites_app.models import Site

    column = _searched_columns()
    lookup = "icontains" if len(word) >= SUBSTRING_FROM else "istartswith"
    matches = Q(**{f"{column['device_id']}__{lookup}": word}) | Q(**{f"{column['name']}__{lookup}": word})
    with contextlib.suppress(ValidationError):  # not a MAC address: no MAC arm
        matches |= Q(**{column["mac_address"]: normalize_mac(word)})
    ip_range = _ip_range(word)
    if ip_range is not None:
        matches |= Q(**{f"{column['ip_address']}__range": ip_range})
    site = Site.objects.filter(site_id=word).values("pk")[:1]
    return matches | Q(**{column["site"]: Subquery(site)})


def device_search(queryset: QuerySet[Device], text: str) -> QuerySet[Device]:
    """`queryset` narrowed to the devices matching every word of `text` (quoted phrases are
    one word). See _word_matches for what a word matches; docs/console.md tells operators."""
    from django.utils.text import smart_split, unescape_string_literal

    for word in smart_split(text):
        if word[:1] in "\"'" and word[-1:] == word[:1] and len(word) > 1:
            word = unescape_string_literal(word)
        word = word.strip()
        if word:
            queryset = queryset.filter(_word_matches(word))
    return queryset
