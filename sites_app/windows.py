"""Maintenance windows in SQL: which sites may be worked on at an instant, and when each
closed site's next window opens. Set-based: one statement for any number of sites, the time
zone arithmetic done by PostgreSQL (`instant AT TIME ZONE site.timezone`), never a Python
loop over sites.

The rule, for a site at an instant: read the site's wall clock (local date D, local time T,
ISO weekday of D). The site is open when

- one of its windows opened today and is still running: weekday(D) = window.weekday,
  T >= starts, and (T < ends, or the window runs past midnight: ends <= starts); or one
  opened yesterday and runs past midnight: weekday(D - 1) = window.weekday, ends <= starts,
  T < ends; or the site has no window at all (a whole-day window every day);
- and the date the window opened on (D, or D - 1 for yesterday's) is not in a blackout.

Daylight saving follows from reading the wall clock: in the skipped spring hour a window
opening at 01:30 (Europe/London) opens when the clock jumps to 02:00; in the repeated
autumn hour a window 01:00-01:30 is open both times the clock reads it.

PostgreSQL only (the dispatcher's claim); the SQLite demo does not dispatch.
"""

import datetime
import zoneinfo

from django.db import connection
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL
from django.utils import timezone

from sites_app.models import BlackoutPeriod, MaintenanceWindow, Site

_SITES = Site._meta.db_table
_WINDOWS = MaintenanceWindow._meta.db_table
_BLACKOUTS = BlackoutPeriod._meta.db_table

# How many local days ahead of today, and after the end of each blackout, the next-opening
# search looks (a weekly window is found within 8).
_SEARCH_DAYS = 8

# The sites open at an instant, in one statement whose cost does not depend on the rows it
# filters: the wall clock is read once per time zone in use (not once per site), then the
# windows running now are found with hash joins over the windows, the sites and those few
# zones, each with the local date it opened on, and kept unless that date is blacked out;
# a site with no window at all has the whole of today.
_OPEN_SITES = f"""
WITH zone AS (
    SELECT z.tz, l.lt::date AS d, l.lt::time AS t, EXTRACT(ISODOW FROM l.lt)::int AS dow
      FROM (SELECT DISTINCT timezone AS tz FROM {_SITES}) z
     CROSS JOIN LATERAL (SELECT %s::timestamptz AT TIME ZONE z.tz AS lt) l
),
running AS (
    SELECT w.site_id, z.d AS day
      FROM {_WINDOWS} w JOIN {_SITES} s ON s.id = w.site_id JOIN zone z ON z.tz = s.timezone
     WHERE w.weekday = z.dow AND z.t >= w.starts AND (w.ends <= w.starts OR z.t < w.ends)
    UNION ALL
    SELECT w.site_id, z.d - 1
      FROM {_WINDOWS} w JOIN {_SITES} s ON s.id = w.site_id JOIN zone z ON z.tz = s.timezone
     WHERE w.weekday = (z.dow + 5) %% 7 + 1 AND w.ends <= w.starts AND z.t < w.ends
    UNION ALL
    SELECT s.id, z.d FROM {_SITES} s JOIN zone z ON z.tz = s.timezone
     WHERE NOT EXISTS (SELECT 1 FROM {_WINDOWS} w WHERE w.site_id = s.id)
)
SELECT r.site_id FROM running r
 WHERE NOT EXISTS (
    SELECT 1 FROM {_BLACKOUTS} b WHERE b.site_id = r.site_id AND r.day BETWEEN b.starts_on AND b.ends_on)
"""  # noqa: S608 - table names from the models, no input


def now() -> datetime.datetime:
    """The instant windows are judged at. One seam, so tests can move the sites' clocks."""
    return timezone.now()


def open_sites_sql(at: datetime.datetime | None = None) -> tuple[str, list]:
    """SQL selecting the ids of every site whose maintenance window is open at `at`."""
    return _OPEN_SITES, [at or now()]


def open_site_ids(at: datetime.datetime | None = None) -> list[int]:
    """The ids of every site inside a maintenance window at `at` (now when None), read with
    one statement. Filtering a large table by this list (a hashed `IN`) is cheaper than
    filtering it by the statement itself, which the planner may re-run per row."""
    sql, params = open_sites_sql(at)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def open_sites_filter(field: str = "site_id", at: datetime.datetime | None = None) -> Q:
    """A filter keeping the rows whose site (`field`, a site id column) is inside a
    maintenance window at `at` (now when None). PostgreSQL evaluates the subquery once per
    statement (a hashed subplan over the sites), whatever the number of rows filtered."""
    sql, params = open_sites_sql(at)
    return Q(**{f"{field}__in": RawSQL(sql, params)})  # noqa: S611 - fixed SQL, the instant a parameter


def sites_open(site_ids, at: datetime.datetime | None = None) -> set[int]:
    """Which of `site_ids` are inside a maintenance window at `at`."""
    sites = Site.objects.filter(pk__in=list(site_ids)).filter(open_sites_filter("pk", at))
    return set(sites.values_list("pk", flat=True))


# The next instant each site of a set is open, at or after `clock.at`: for every window
# occurrence on the coming local days (and the days after each blackout) not blacked out,
# the candidate instants are `clock.at` itself and the instants whose wall clock reads the
# opening time (PostgreSQL's own reading, which takes standard time in a repeated or skipped
# hour; the readings under the offsets in force a day before and after it, which finds the
# earlier of a repeated hour; and the whole UTC hour before PostgreSQL's reading, which is
# when the clock jumps over a skipped hour in every zone that jumps on the hour). A
# candidate counts only if the wall clock then reads inside the occurrence, so each answer
# is an instant the site is open; the earliest wins. (A zone jumping on a half hour finds
# an opening inside its skipped hour up to the jump late.)
_NEXT_OPENINGS = f"""
WITH clock AS (SELECT %s::timestamptz AS at),
s AS (
    SELECT id, timezone AS tz, (clock.at AT TIME ZONE timezone) AS lt
      FROM {_SITES}, clock WHERE id IN ({{sites}})
),
win AS (
    SELECT w.site_id, w.weekday, w.starts, w.ends FROM {_WINDOWS} w JOIN s ON s.id = w.site_id
    UNION ALL
    SELECT s.id, d, time '00:00', time '00:00' FROM s, generate_series(1, 7) d
     WHERE NOT EXISTS (SELECT 1 FROM {_WINDOWS} w WHERE w.site_id = s.id)
),
days AS (
    SELECT s.id AS site_id, s.lt::date + k AS day FROM s, generate_series(-1, {_SEARCH_DAYS}) k
    UNION
    SELECT b.site_id, b.ends_on + k FROM {_BLACKOUTS} b JOIN s ON s.id = b.site_id,
           generate_series(1, {_SEARCH_DAYS}) k
     WHERE b.ends_on >= s.lt::date - 1
),
occ AS (
    SELECT days.site_id, s.tz, days.day + w.starts AS opens,
           days.day + w.ends + CASE WHEN w.ends <= w.starts THEN interval '1 day' ELSE interval '0' END
               AS closes
      FROM days JOIN s ON s.id = days.site_id
      JOIN win w ON w.site_id = days.site_id AND w.weekday = EXTRACT(ISODOW FROM days.day)
     WHERE NOT EXISTS (
        SELECT 1 FROM {_BLACKOUTS} b
         WHERE b.site_id = days.site_id AND days.day BETWEEN b.starts_on AND b.ends_on)
),
cand AS (
    SELECT occ.site_id, occ.tz, occ.opens, occ.closes, c.at
      FROM occ
     CROSS JOIN LATERAL (SELECT occ.opens AT TIME ZONE occ.tz AS p) p
     CROSS JOIN LATERAL (VALUES
        ((SELECT at FROM clock)),
        (p.p),
        (date_trunc('hour', p.p, 'UTC')),
        ((occ.opens - ((p.p - interval '1 day') AT TIME ZONE occ.tz
                       - (p.p - interval '1 day') AT TIME ZONE 'UTC')) AT TIME ZONE 'UTC'),
        ((occ.opens - ((p.p + interval '1 day') AT TIME ZONE occ.tz
                       - (p.p + interval '1 day') AT TIME ZONE 'UTC')) AT TIME ZONE 'UTC')
     ) c(at)
)
SELECT cand.site_id, MIN(cand.at) FROM cand, clock
 WHERE cand.at >= clock.at
   AND (cand.at AT TIME ZONE cand.tz) >= cand.opens
   AND (cand.at AT TIME ZONE cand.tz) < cand.closes
 GROUP BY cand.site_id
"""  # noqa: S608


def _sites_subquery(sites) -> tuple[str, list]:
    if isinstance(sites, QuerySet):
        return sites.order_by().values("pk").query.sql_with_params()
    return "SELECT unnest(%s::bigint[])", [list(sites)]


def next_openings(sites, at: datetime.datetime | None = None) -> dict[int, datetime.datetime]:
    """When each of `sites` (a Site queryset or site ids) is next inside a maintenance
    window, at or after `at` (now when None): `at` itself for a site open now. A site whose
    windows are all blacked out for the coming weeks is left out. One statement."""
    sites_sql, sites_params = _sites_subquery(sites)
    with connection.cursor() as cursor:
        cursor.execute(_NEXT_OPENINGS.replace("{sites}", sites_sql), [at or now(), *sites_params])
        return dict(cursor.fetchall())


def earliest_opening(sites, at: datetime.datetime | None = None) -> datetime.datetime | None:
    """The first instant, at or after `at`, when any of `sites` is inside a window."""
    openings = next_openings(sites, at)
    return min(openings.values()) if openings else None


def _in(delta: datetime.timedelta) -> str:
    minutes = max(round(delta.total_seconds() / 60), 0)
    if minutes < 1:
        return "in less than a minute"
    if minutes < 90:
        return f"in {minutes} min"
    hours = round(minutes / 60)
    if hours < 48:
        return f"in {hours} h"
    return f"in {round(hours / 24)} days"


def opening_text(opens_at: datetime.datetime | None, tz: str, at: datetime.datetime | None = None) -> str:
    """ "opens 02:00 Europe/London, in 3 h" (the weekday and date when not today there),
    "open now", or "no window in the coming weeks"."""
    at = at or now()
    if opens_at is None:
        return "no window in the coming weeks"
    if opens_at <= at:
        return "open now"
    zone = zoneinfo.ZoneInfo(tz)
    local, today = opens_at.astimezone(zone), at.astimezone(zone).date()
    when = f"{local:%H:%M}" if local.date() == today else f"{local:%a %d %b %H:%M}"
    return f"opens {when} {tz}, {_in(opens_at - at)}"
