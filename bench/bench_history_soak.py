"""History soak: does anything get slower as the health history grows? And retention.

    # fill five days (50 million rows) once and keep the database, then measure on it:
    python bench/bench_history_soak.py --fill-only --days 0 1 5 --skip-write-cost
    python bench/bench_history_soak.py --reuse --keep --days 0 1 5 --size-rounds 3 \
        --skip-write-cost --json soak.json
    python bench/bench_history_soak.py --write-cost-only        # plain vs partitioned INSERT cost

What it does:
  1. recreates a scratch database (`--database`, default homepot_soak_bench; DROPPED unless
     `--reuse`), migrates it (the history tables come out partitioned by day) and runs
     `manage.py create_fleet` (`--devices`, 100 per site);
  2. write cost per row: the same rows INSERTed into a plain table carrying the indexes the
     health table had before partitioning (migration 0015: id, device, (device, checked_at),
     checked_at, (status, checked_at), (status, id)) and into the partitioned health table,
     set-based (`--write-cost-rows` in one INSERT ... SELECT) and one row a statement in
     autocommit (as the ingest writes), alternating, `--rounds` times: rows per second each;
  3. fills the days before today up to the largest of `--days` that the database lacks
     (`--rows-per-device-day` rows per device per day; 100 × 100,000 = 10 million rows a day)
     set-based: INSERT ... SELECT over generate_series, in time order, into the day's table
     created detached and WAL-logged, one statement a day (`--fill-jobs` days at once, the
     generator's session with synchronous_commit off), then ATTACHed (its indexes built in one
     pass each), then VACUUM ANALYZE; each device row is then given its newest filled
     report's time (`last_health_at`, as the ingest keeps it); `--fill-only` stops there;
  4. `--size-rounds` rounds, each measuring every size of `--days` in turn (the history made
     to hold exactly that many days by detaching and re-attaching whole filled days, which
     keep their indexes and a CHECK of their range, so that takes milliseconds): the sizes
     are compared minutes apart, not an hour apart on a machine whose load changes by the
     minute. At each:
       - ingest: single health reports (health_reports_record: the INSERT + the conditional
         device UPDATE), batches of 50 reports, and heartbeats that write the device row
         (HOMEPOT_MONITORING_TOUCH_SECONDS=0), each for `--ingest-seconds` from
         `--ingest-threads` threads: reports per second (the 0 size of the same round is the
         baseline measured beside it);
       - reads in-process (DRF/Django test clients as an admin of every site), `--repeat`
         each, a random device or site each time: median/p90 wall time, and the SQL
         statements and this thread's CPU time per request; a device's latest check (GET
         /api/v1/health-checks?device=..&page_size=1), its timeline
         (/api/v1/fleet/devices/../timeline), a site's hour of checks yesterday
         (/api/v1/health-checks?site=..&since=..&until=..), site health
         (/api/v1/sites/../health), the fleet dashboard (/admin/monitoring_app/alert/fleet/),
         the admin health-check list (/admin/monitoring_app/healthcheck/: its default window,
         filtered to unhealthy, and any date);
       - the history SQL behind them by EXPLAIN (ANALYZE, BUFFERS), the same devices and sites
         at every size: planning and execution time, shared buffers touched, rows;
  5. on the largest size, retention while single reports arrive: the task's two steps timed
     apart, health_history_prune (detach the oldest day, write the audit row) and
     history_reclaim (drop the detached table: the files go), with the ingest's rate, worst
     latency and errors during each and pg_stat_activity sampled every 20 ms (who waited on
     a lock); then the next day's rows removed by the batched DELETE the plain table used
     (5,000 a batch) for at most `--delete-budget` seconds (the rate gives the whole day's).

Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import datetime
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import (  # noqa: E402
    command_env,
    drop_database,
    machine,
    manage,
    recreate_database,
    setup_django,
)

HEALTH = "monitoring_app_healthcheck"
PLAIN = "bench_plain_healthcheck"
# The health table's indexes before partitioning (migrations 0001-0015), for the write cost.
PLAIN_INDEXES = (
    "(device_id)",
    "(device_id, checked_at DESC)",
    "(checked_at DESC)",
    "(status, checked_at DESC)",
    "(status, id DESC)",
)
COLUMNS = "device_id, status, response_time_ms, metrics, error_message, checked_at"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", default="homepot_soak_bench", help="Scratch database (dropped!).")
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--rows-per-device-day", type=int, default=100)
    parser.add_argument("--days", type=int, nargs="+", default=[0, 1, 5], help="Sizes measured, in days.")
    parser.add_argument(
        "--size-rounds", type=int, default=3, help="Rounds over all sizes (each size once a round)."
    )
    parser.add_argument("--reuse", action="store_true", help="Reuse the database and the days it holds.")
    parser.add_argument("--fill-only", action="store_true", help="Fill the days, keep the database, stop.")
    parser.add_argument("--fill-jobs", type=int, default=1, help="Days filled at once, one connection each.")
    parser.add_argument("--skip-retention", action="store_true")
    parser.add_argument(
        "--no-fill", action="store_true", help="Measure the days the database holds, fill none."
    )
    parser.add_argument("--ingest-seconds", type=float, default=5.0)
    parser.add_argument("--ingest-threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15, help="Timed requests per read.")
    parser.add_argument("--write-cost-rows", type=int, default=500_000)
    parser.add_argument("--write-cost-single", type=int, default=5_000, help="Single-row INSERTs per round.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delete-budget", type=float, default=120.0, help="Seconds of batched DELETE.")
    parser.add_argument("--write-cost-only", action="store_true")
    parser.add_argument("--skip-write-cost", action="store_true")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    parser.add_argument("--json", type=Path, help="Also write the results here as JSON.")
    parser.add_argument(
        "--latest-of-reporting",
        action="store_true",
        help="A device's latest check is asked of devices with 2 reports or more since today's "
        "midnight (the run's own ingest writes them), as in a fleet reporting every 2 minutes; "
        "else of any device (most of which, in a filled copy, last reported yesterday).",
    )
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def today_utc() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


def midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)


# --- filling ----------------------------------------------------------------------------------


def _rows_sql(target: str) -> str:
    """INSERT ... SELECT of `per_day` rows per device for one day, in time order (k outer),
    statuses 90/8/2 % healthy/degraded/unhealthy, a small metrics object like an agent's."""
    return f"""
        INSERT INTO {target} ({COLUMNS})
        SELECT d.id,
               CASE WHEN mod(d.id + k, 50) = 0 THEN 'unhealthy'
                    WHEN mod(d.id + k, 12) = 0 THEN 'degraded' ELSE 'healthy' END,
               40 + mod(d.id * 7 + k * 13, 400),
               jsonb_build_object('cpu_percent', mod(d.id + k, 100), 'memory_percent',
                                  mod(d.id * 3 + k, 100), 'disk_free_mb', 2048 + mod(d.id, 512)),
               '',
               %(start)s::timestamptz + k * %(step)s::interval + mod(d.id, 1000) * %(jitter)s::interval
        FROM generate_series(%(k0)s::int, %(k1)s::int) k CROSS JOIN (SELECT id FROM devices_app_device) d
    """  # noqa: S608 (fixed names)


def fill_day(day: datetime.date, per_day: int) -> float:
    """Insert one day of history as an operator's database would have it, but quickly: the
    day's table is filled detached and without indexes, by one INSERT ... SELECT in time
    order, then attached, which builds its indexes in one sorted pass each (the same indexes
    the ingest maintains row by row). The table is WAL-logged like any partition (an UNLOGGED
    table would differ from the ingest's in what a checkpoint and a crash do to it); only this
    session commits without waiting for the WAL flush.

    The CHECK constraint proving the day's range stays, so that the measuring can detach and
    re-attach whole days (ATTACH then scans nothing) to compare sizes in one window."""
    from django.db import connection

    from monitoring_app import partitions

    name = partitions.HEALTH.day_partition(day)
    step = datetime.timedelta(days=1) / per_day
    start = time.perf_counter()
    lower, upper = midnight(day), midnight(day + datetime.timedelta(days=1))
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        cursor.execute("SET maintenance_work_mem = '1GB'")
        cursor.execute(f'CREATE TABLE "{name}" (LIKE {HEALTH} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
        cursor.execute(
            _rows_sql(f'"{name}"'),
            {"start": lower, "step": step, "jitter": step / 1000, "k0": 0, "k1": per_day - 1},
        )
        cursor.execute(
            f'ALTER TABLE "{name}" ADD CONSTRAINT bench_range CHECK (checked_at >= %s AND checked_at < %s)',
            [lower, upper],
        )
        cursor.execute(
            f'ALTER TABLE {HEALTH} ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)', [lower, upper]
        )
    return time.perf_counter() - start


def _detach_and_drop(days: list[datetime.date]) -> None:
    """Take the days about to be filled out of the history before any worker starts: a
    DETACH waits for the parent's lock, which another worker's ATTACH holds for minutes."""
    from django.db import connection

    from monitoring_app import partitions

    attached = {p.name for p in partitions.partitions(partitions.HEALTH)}
    with connection.cursor() as cursor:
        for day in days:
            name = partitions.HEALTH.day_partition(day)
            if name in attached:
                cursor.execute(f'ALTER TABLE {HEALTH} DETACH PARTITION "{name}"')
            # A fill stopped half-way leaves its table detached: that day starts again.
            cursor.execute(f'DROP TABLE IF EXISTS "{name}"')


def _fill_worker(queue: list, per_day: int, timings: dict, lock: threading.Lock) -> None:
    from django.db import connection

    from monitoring_app import partitions

    try:
        while True:
            with lock:
                if not queue:
                    return
                day = queue.pop(0)
            log(f"filling {day} ({per_day} rows per device)")
            took = fill_day(day, per_day)
            vacuum(partitions.HEALTH.day_partition(day))
            log(f"filled {day} in {took:.0f} s (and VACUUM ANALYZEd)")
            with lock:
                timings[str(day)] = round(took, 1)
    finally:
        connection.close()


def fill_to(days: int, per_day: int, filled: set, *, jobs: int = 1) -> dict:
    """Fill the `days` days before today that are not filled yet, `jobs` days at a time
    (each its own connection: on an idle 2-core machine two days fill in about the time of one)."""
    from monitoring_app import partitions

    timings: dict = {}
    wanted = [today_utc() - datetime.timedelta(days=n) for n in range(1, days + 1)]
    partitions.history_partitions_create(partitions.HEALTH, days=wanted)
    partitions.history_partitions_create(partitions.STATUS_CHANGES, days=wanted)
    # Oldest day first: ids then grow with time, as the ingest's do (the API's lists are
    # ordered by id; days filled newest first would number the oldest rows highest).
    queue = sorted(day for day in wanted if day not in filled)
    _detach_and_drop(queue)
    lock = threading.Lock()
    workers = [
        threading.Thread(target=_fill_worker, args=(queue, per_day, timings, lock))
        for _ in range(max(1, min(jobs, len(queue))))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    filled.update(datetime.date.fromisoformat(day) for day in timings)
    return timings


def filled_days() -> set[datetime.date]:
    """The days a previous run filled (their partitions carry the bench's CHECK)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT c.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
               WHERE k.conname = 'bench_range' AND c.relname LIKE %s""",
            [f"{HEALTH}_p%"],
        )
        return {datetime.datetime.strptime(row[0][-8:], "%Y%m%d").date() for row in cursor.fetchall()}


def attach_only(days: int, filled: set) -> None:
    """Make the history hold exactly the `days` filled days before today: the others are
    detached (kept, with their indexes and CHECK, so re-attaching is instant)."""
    from django.db import connection

    from monitoring_app import partitions

    wanted = {today_utc() - datetime.timedelta(days=n) for n in range(1, days + 1)}
    attached = {p.name for p in partitions.partitions(partitions.HEALTH)}
    with connection.cursor() as cursor:
        for day in sorted(filled):
            name = partitions.HEALTH.day_partition(day)
            if day in wanted and name not in attached:
                lower, upper = midnight(day), midnight(day + datetime.timedelta(days=1))
                cursor.execute(
                    f'ALTER TABLE {HEALTH} ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
                    [lower, upper],
                )
            elif day not in wanted and name in attached:
                cursor.execute(f'ALTER TABLE {HEALTH} DETACH PARTITION "{name}"')


def note_last_reports(newest: datetime.date, per_day: int) -> int:
    """Give each device row the time of its newest filled report (`last_health_at`), as the
    ingest keeps it: the fill writes history only, and a device's timeline reads its history
    back from that time (monitoring_app.selectors.newest_first). Set-based, by the fill's own
    formula for the last report of the day `newest` (no scan of the history); a row that
    already knows a later report keeps it. Returns the rows updated."""
    from django.db import connection

    step = datetime.timedelta(days=1) / per_day
    last = midnight(newest) + step * (per_day - 1)
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE devices_app_device SET last_health_at = %s::timestamptz + mod(id, 1000) * %s::interval
               WHERE last_health_at IS NULL OR last_health_at < %s::timestamptz""",
            [last, step / 1000, last],
        )
        return cursor.rowcount


def vacuum(table: str) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f'VACUUM ANALYZE "{table}"')


def history_rows() -> int:
    from django.db import connection

    # The statistics' count (the filled days were VACUUM ANALYZEd; today's ingest adds a few
    # thousand): an ANALYZE of 50 million rows at every size would cost more than the run.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(sum(c.reltuples), 0)::bigint FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass",
            [HEALTH],
        )
        return cursor.fetchone()[0]


def sizes() -> list[dict]:
    """Rows (the statistics' estimate) and MB of each health partition with rows: heap,
    indexes, total."""
    from django.db import connection

    from monitoring_app import partitions

    result = []
    with connection.cursor() as cursor:
        for part in partitions.partitions(partitions.HEALTH, cursor):
            cursor.execute(
                """SELECT greatest(reltuples, 0)::bigint, pg_relation_size(oid), pg_indexes_size(oid),
                          pg_total_relation_size(oid)
                   FROM pg_class WHERE oid = to_regclass(%s)""",
                [part.name],
            )
            rows, heap, indexes, total = cursor.fetchone()
            if rows > 0:
                mb = 1024 * 1024
                result.append(
                    {
                        "partition": part.name,
                        "rows": rows,
                        "heap_mb": round(heap / mb),
                        "indexes_mb": round(indexes / mb),
                        "mb": round(total / mb),
                    }
                )
    return result


# --- ingest -----------------------------------------------------------------------------------


def _device_pks() -> list[int]:
    from devices_app.models import Device

    return list(Device.objects.values_list("pk", flat=True))


def ingest_once(kind: str, device: int) -> int:
    """One call of the ingest's service for `device`: a heartbeat that writes the device row
    (`heartbeat`), a single health report (`health`) or a batch of 50 (`health_batch`), all
    checked now, written directly (no Redis buffer). Returns the reports or heartbeats done."""
    from django.utils import timezone

    from monitoring_app.ingest import HealthReport, _touch_device, health_reports_record

    now = timezone.now()
    if kind == "heartbeat":
        _touch_device(device_id=device, now=now, reported_at=None)
        return 1
    size = 50 if kind == "health_batch" else 1
    report = HealthReport(
        status="healthy",
        checked_at=now,
        response_time_ms=120,
        metrics={"cpu_percent": 12.5, "memory_percent": 40.0},
    )
    return health_reports_record(device_reports=[(device, report)] * size)


class IngestLoad:
    """`threads` threads calling `kind`'s service until stopped; counts, errors, latencies."""

    def __init__(self, kind: str, pks: list[int], threads: int):
        self.kind, self.pks, self.threads = kind, pks, threads
        self.stop = threading.Event()
        self.count = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self):
        self.started = time.perf_counter()
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for worker in self.workers:
            worker.join()
        self.elapsed = time.perf_counter() - self.started

    def _run(self, n: int) -> None:
        from django.db import connection

        rng = random.Random(n)
        while not self.stop.is_set():
            start = time.perf_counter()
            try:
                done = ingest_once(self.kind, rng.choice(self.pks))
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                with self.lock:
                    self.errors.append(repr(exc)[:200])
                continue
            took = time.perf_counter() - start
            with self.lock:
                self.count += done
                self.latencies.append(took)
        connection.close()

    def summary(self) -> dict:
        lat = sorted(self.latencies) or [0.0]
        return {
            "per_s": round(self.count / self.elapsed, 1),
            "p50_ms": round(lat[len(lat) // 2] * 1000, 2),
            "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 1),
            "errors": len(self.errors),
            "first_errors": self.errors[:3],
        }


def measure_ingest(args, pks) -> dict:
    results = {}
    for kind in ("health", "health_batch", "heartbeat"):
        with IngestLoad(kind, pks, args.ingest_threads) as load:
            time.sleep(args.ingest_seconds)
        results[kind] = load.summary()
    return results


# --- reads ------------------------------------------------------------------------------------


def _time(get, urls: list[str]) -> dict:
    """Wall time of each request, and two figures the machine's load does not move: the SQL
    statements it ran and this thread's CPU time (the Django and DRF work; PostgreSQL's is
    in the EXPLAIN figures)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    samples, cpu, queries = [], [], []
    for url in urls:
        with CaptureQueriesContext(connection) as captured:
            start, start_cpu = time.perf_counter(), time.thread_time()
            response = get(url)
            cpu.append((time.thread_time() - start_cpu) * 1000)
            samples.append((time.perf_counter() - start) * 1000)
        queries.append(len(captured.captured_queries))
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.content[:300]!r}")
    samples.sort()
    return {
        "median_ms": round(statistics.median(samples), 1),
        "p90_ms": round(samples[int(len(samples) * 0.9)], 1),
        "worst_ms": round(samples[-1], 1),
        "cpu_median_ms": round(statistics.median(cpu), 1),
        "queries": max(queries),
    }


def measure_reads(args, admin, window_day: datetime.date | None) -> dict:
    from django.test import Client
    from rest_framework.test import APIClient

    from devices_app.models import Device
    from sites_app.models import Site

    rng = random.Random(7)
    devices = list(Device.objects.values_list("device_id", flat=True))
    sites = list(Site.objects.values_list("site_id", flat=True))
    api = APIClient()
    api.force_authenticate(admin)
    browser = Client()
    browser.force_login(admin)

    def api_get(url):
        return api.get(url, HTTP_HOST="localhost")

    def admin_get(url):
        return browser.get(url, HTTP_HOST="localhost")

    def some(template: str, pool: list[str]) -> list[str]:
        return [template.format(rng.choice(pool)) for _ in range(args.repeat + 1)][1:]

    api_get("/api/v1/health-checks?page_size=1")  # warm-up
    hour = midnight(window_day) + datetime.timedelta(hours=12) if window_day else None
    window = (
        f"&since={hour.isoformat().replace('+00:00', 'Z')}"
        f"&until={(hour + datetime.timedelta(hours=1)).isoformat().replace('+00:00', 'Z')}"
        if hour
        else ""
    )
    latest_pool = devices
    if args.latest_of_reporting:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute(
                """SELECT d.device_id FROM devices_app_device d WHERE d.id IN (
                       SELECT device_id FROM monitoring_app_healthcheck WHERE checked_at >= %s
                       GROUP BY device_id HAVING count(*) >= 2 ORDER BY device_id LIMIT 1000)""",
                [midnight(datetime.datetime.now(datetime.UTC).date())],
            )
            latest_pool = [row[0] for row in cursor.fetchall()] or devices
    return {
        "device_latest": _time(api_get, some("/api/v1/health-checks?device={}&page_size=1", latest_pool)),
        "device_timeline": _time(api_get, some("/api/v1/fleet/devices/{}/timeline", devices)),
        "site_hour_of_checks": _time(api_get, some("/api/v1/health-checks?site={}" + window, sites)),
        "site_health": _time(api_get, some("/api/v1/sites/{}/health", sites)),
        "fleet_dashboard": _time(admin_get, ["/admin/monitoring_app/alert/fleet/"] * args.repeat),
        "admin_health_list": _time(admin_get, ["/admin/monitoring_app/healthcheck/"] * args.repeat),
        "admin_health_list_unhealthy": _time(
            admin_get, ["/admin/monitoring_app/healthcheck/?status__exact=unhealthy"] * args.repeat
        ),
        # The list as it was before its default window (the same SQL): what "Any date" costs.
        "admin_health_list_any_date": _time(
            admin_get, ["/admin/monitoring_app/healthcheck/?window=all"] * args.repeat
        ),
    }


# The history's queries behind those reads, timed by EXPLAIN ANALYZE (planning counts: it grows
# with the number of partitions). {device} and {site} are filled in with random ones, {anchor}
# with the device row's last_health_at.
SQL_READS = {
    # "Latest" by report time (what the soaks before issue 11's `reads` measured under this name).
    "device_latest": "SELECT * FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "ORDER BY checked_at DESC, id DESC LIMIT 1",
    # What GET /api/v1/health-checks?device=..&page_size=1 runs: newest by id (arrival order).
    "device_latest_api": "SELECT * FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "ORDER BY id DESC LIMIT 2",
    # The timeline's health reports as they were read (every day's index), and as they are now
    # (monitoring_app.selectors.newest_first: the day before the device's last report first).
    "device_timeline_health": "SELECT * FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "ORDER BY checked_at DESC, id DESC LIMIT 50",
    "device_timeline_health_window": "SELECT * FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "AND checked_at >= '{anchor}'::timestamptz - interval '1 day' ORDER BY checked_at DESC, id DESC LIMIT 50",
    "site_hour": "SELECT h.* FROM monitoring_app_healthcheck h "
    "JOIN devices_app_device d ON d.id = h.device_id "
    "WHERE d.site_id = {site} AND h.checked_at >= (now() AT TIME ZONE 'UTC')::date - interval '12 hours' "
    "AND h.checked_at < (now() AT TIME ZONE 'UTC')::date - interval '11 hours' ORDER BY h.id DESC LIMIT 51",
    "admin_list_first_page": "SELECT * FROM monitoring_app_healthcheck "
    "ORDER BY checked_at DESC, id DESC LIMIT 100",
    "admin_list_unhealthy": "SELECT * FROM monitoring_app_healthcheck WHERE status = 'unhealthy' "
    "ORDER BY checked_at DESC, id DESC LIMIT 100",
    "api_list_first_page": "SELECT * FROM monitoring_app_healthcheck ORDER BY id DESC LIMIT 51",
    # A device's latest check through the API since the reads merge: its page from today's rows,
    # then the proof that no older day holds a row of the device with a higher id than the
    # page's, by a probe of every older day (reads, until latest3) or of the off-day record
    # (latest3). A recent id (the sequence's, less 1,000, read before the EXPLAINs) stands
    # for the page's.
    "device_latest_api_today": "SELECT * FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "AND checked_at >= date_trunc('day', now(), 'UTC') ORDER BY id DESC LIMIT 2",
    "device_latest_api_proof_by_days": "SELECT 1 FROM monitoring_app_healthcheck WHERE device_id = {device} "
    "AND checked_at < date_trunc('day', now(), 'UTC') "
    "AND id > {recent_id} LIMIT 1",
    "device_latest_api_proof_by_record": "SELECT check_id, checked_at FROM monitoring_app_healthcheckoffday "
    "WHERE check_id >= {recent_id} "
    "AND device_id = ANY(ARRAY[{device}]::bigint[]) ORDER BY check_id LIMIT 51",
}


def measure_sql(repeat: int) -> dict:
    """EXPLAIN (ANALYZE, BUFFERS) of each history query, the same devices and sites at every
    size (a fixed seed): planning and execution time (median, worst), and what the load does
    not move: the shared buffers touched (hit + read, median) and the rows returned."""
    from django.db import connection

    rng = random.Random(11)
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM devices_app_device ORDER BY id")
        devices = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT id FROM sites_app_site ORDER BY id")
        sites = [row[0] for row in cursor.fetchall()]
        picks = [(rng.choice(devices), rng.choice(sites)) for _ in range(repeat)]
        cursor.execute(
            "SELECT id, coalesce(last_health_at, now()) FROM devices_app_device WHERE id = ANY(%s)",
            [[device for device, _ in picks]],
        )
        anchors = {pk: at.isoformat() for pk, at in cursor.fetchall()}
        cursor.execute("SELECT last_value - 1000 FROM monitoring_app_healthcheck_id_seq")
        recent_id = cursor.fetchone()[0]
        results = {}
        for name, template in SQL_READS.items():
            planning, execution, hit, read, rows = [], [], [], [], []
            for device, site in picks:
                sql = template.format(device=device, site=site, anchor=anchors[device], recent_id=recent_id)
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql)
                explained = cursor.fetchone()[0]
                explained = (json.loads(explained) if isinstance(explained, str) else explained)[0]
                plan = explained["Plan"]
                planning.append(explained["Planning Time"])
                execution.append(explained["Execution Time"])
                hit.append(plan["Shared Hit Blocks"])
                read.append(plan["Shared Read Blocks"])
                rows.append(plan["Actual Rows"])
            results[name] = {
                "planning_ms": round(statistics.median(planning), 2),
                "execution_ms": round(statistics.median(execution), 2),
                "execution_worst_ms": round(max(execution), 2),
                "buffers": statistics.median([h + r for h, r in zip(hit, read, strict=True)]),
                "buffers_read": statistics.median(read),
                "rows": statistics.median(rows),
            }
    return results


# --- retention --------------------------------------------------------------------------------


class LockWatch:
    """Samples pg_stat_activity every 20 ms from its own connection while open: how often a
    backend of this database waited on a lock (and on what), and what the retention's own
    backend was waiting on (no wait event while it is in the kernel removing files)."""

    def __init__(self, retention_pid: int):
        self.retention_pid = retention_pid
        self.stop = threading.Event()
        self.samples = 0
        self.lock_waits: dict[str, int] = {}
        self.retention_waits: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def _run(self) -> None:
        from django.db import connection

        with connection.cursor() as cursor:
            while not self.stop.is_set():
                cursor.execute(
                    """SELECT pid, coalesce(wait_event_type, '-'), coalesce(wait_event, '-'), state
                       FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"""
                )
                self.samples += 1
                for pid, kind, event, state in cursor.fetchall():
                    if pid == self.retention_pid:
                        key = f"{state}:{kind}:{event}"
                        self.retention_waits[key] = self.retention_waits.get(key, 0) + 1
                    elif kind == "Lock":
                        self.lock_waits[event] = self.lock_waits.get(event, 0) + 1
                time.sleep(0.02)
        connection.close()

    def summary(self) -> dict:
        return {
            "samples": self.samples,
            "ingest_lock_wait_samples": self.lock_waits,
            "retention_backend": self.retention_waits,
        }


def _backend_pid() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def measure_retention(args, pks, oldest: datetime.date, next_day: datetime.date) -> dict:
    """The oldest day removed the retention's way while single reports arrive: the task's
    two steps timed apart (health_history_prune, which detaches the day and writes the audit
    row: what the history's readers and writers wait for; then history_reclaim, which
    removes the files), with the ingest's worst latency and errors during each; then the
    next day by the batched DELETE the plain table used, for comparison."""
    from monitoring_app.models import AuditLog
    from monitoring_app.retention import health_history_prune, history_reclaim

    results = {}
    name = f"{HEALTH}_p{oldest:%Y%m%d}"
    day_size = next((s for s in sizes() if s["partition"] == name), {})
    cutoff = midnight(oldest + datetime.timedelta(days=1))
    with IngestLoad("health", pks, args.ingest_threads) as before:
        time.sleep(2)
    pid = _backend_pid()
    with IngestLoad("health", pks, args.ingest_threads) as detach_load:
        time.sleep(1)
        with LockWatch(pid) as detach_watch:
            start = time.perf_counter()
            removed = health_history_prune(now=cutoff, days=0)
            detach_took = time.perf_counter() - start
        time.sleep(1)
    with IngestLoad("health", pks, args.ingest_threads) as reclaim_load:
        time.sleep(1)
        with LockWatch(pid) as reclaim_watch:
            start = time.perf_counter()
            reclaimed = history_reclaim()
            reclaim_took = time.perf_counter() - start
        time.sleep(1)
    audit = AuditLog.objects.filter(event_type="health.pruned").order_by("-pk").first()
    results["partition"] = {
        "day": name,
        "day_size": day_size,
        "rows_removed": removed,
        "audit": audit.new_values if audit else None,
        "ingest_before": before.summary(),
        "detach_and_audit_seconds": round(detach_took, 3),
        "ingest_during_detach": detach_load.summary(),
        "locks_during_detach": detach_watch.summary(),
        "reclaim_seconds": round(reclaim_took, 3),
        "reclaimed": reclaimed,
        "ingest_during_reclaim": reclaim_load.summary(),
        "locks_during_reclaim": reclaim_watch.summary(),
    }
    log(f"retention by partition: {results['partition']}")

    name = f"{HEALTH}_p{next_day:%Y%m%d}"
    day_rows = next((s["rows"] for s in sizes() if s["partition"] == name), 0)
    day_cutoff = midnight(next_day + datetime.timedelta(days=1))
    with IngestLoad("health", pks, args.ingest_threads) as load:
        deleted, took = _bounded_prune(name, day_cutoff, args.delete_budget)
    rate = deleted / took if took else 0
    results["batched_delete"] = {
        "seconds": round(took, 1),
        "rows": deleted,
        "day_rows": day_rows,
        "rows_per_s": round(rate),
        "whole_day_seconds_at_that_rate": round(day_rows / rate) if rate else None,
        "ingest_meanwhile": load.summary(),
    }
    return results


def _bounded_prune(name: str, cutoff: datetime.datetime, budget: float) -> tuple[int, float]:
    """The retention's batched DELETE (5,000 a batch, each committed) for at most `budget`
    seconds: (rows deleted, seconds)."""
    from django.db import connection, transaction

    total, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"""DELETE FROM "{name}" WHERE id IN (
                        SELECT id FROM "{name}" WHERE checked_at < %s LIMIT 5000)""",  # noqa: S608
                [cutoff],
            )
            deleted = cursor.rowcount
        total += deleted
        if deleted < 5000:
            break
    return total, time.perf_counter() - start


# --- write cost -------------------------------------------------------------------------------


def make_plain_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {PLAIN}")
        cursor.execute(f"CREATE TABLE {PLAIN} (LIKE {HEALTH} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(f"ALTER TABLE {PLAIN} ALTER COLUMN id DROP DEFAULT")
        cursor.execute(f"ALTER TABLE {PLAIN} ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY")
        cursor.execute(f"ALTER TABLE {PLAIN} ADD PRIMARY KEY (id)")
        cursor.execute(
            f"ALTER TABLE {PLAIN} ADD FOREIGN KEY (device_id) REFERENCES devices_app_device (id) "
            "DEFERRABLE INITIALLY DEFERRED"
        )
        for n, columns in enumerate(PLAIN_INDEXES):
            cursor.execute(f"CREATE INDEX bench_plain_{n} ON {PLAIN} {columns}")
        cursor.execute(
            f"CREATE UNIQUE INDEX bench_plain_legacy ON {PLAIN} (legacy_id) WHERE legacy_id IS NOT NULL"
        )


def _set_based(target: str, rows: int, devices: int) -> float:
    from django.db import connection

    per_device = max(1, rows // devices)
    start = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            _rows_sql(target),
            {
                "start": datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1),
                "step": datetime.timedelta(minutes=1),
                "jitter": datetime.timedelta(milliseconds=10),
                "k0": 0,
                "k1": per_device - 1,
            },
        )
        inserted = cursor.rowcount
    return inserted / (time.perf_counter() - start)


def _single_rows(target: str, rows: int, pks: list[int]) -> float:
    from django.db import connection

    rng = random.Random(3)
    sql = (
        f"INSERT INTO {target} ({COLUMNS}) VALUES (%s, 'healthy', 120, "  # noqa: S608 (fixed names)
        "'{\"cpu_percent\": 12.5}'::jsonb, '', now())"
    )
    start = time.perf_counter()
    with connection.cursor() as cursor:
        for _ in range(rows):
            cursor.execute(sql, [rng.choice(pks)])  # autocommit: one transaction each
    return rows / (time.perf_counter() - start)


def measure_write_cost(args, pks) -> dict:
    from django.db import connection

    make_plain_table()
    runs = {"set_based": {"plain": [], "partitioned": []}, "single_row": {"plain": [], "partitioned": []}}
    for round_number in range(args.rounds):
        order = [PLAIN, HEALTH] if round_number % 2 == 0 else [HEALTH, PLAIN]
        for target in order:
            label = "plain" if target == PLAIN else "partitioned"
            runs["set_based"][label].append(_set_based(target, args.write_cost_rows, len(pks)))
            runs["single_row"][label].append(_single_rows(target, args.write_cost_single, pks))
        log(f"write cost round {round_number + 1}: {runs}")
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE {PLAIN}")
        cursor.execute(f"TRUNCATE {HEALTH}")
    result = {}
    for mode, by_label in runs.items():
        ratios = [p / q for p, q in zip(by_label["partitioned"], by_label["plain"], strict=True)]
        result[mode] = {
            "plain_rows_per_s": [round(v) for v in by_label["plain"]],
            "partitioned_rows_per_s": [round(v) for v in by_label["partitioned"]],
            "partitioned_over_plain": [round(r, 2) for r in ratios],
        }
    return result


# --- main -------------------------------------------------------------------------------------


def run(args) -> dict:
    from django.conf import settings

    from accounts.models import User
    from monitoring_app.rollup import fleet_snapshot_take

    settings.DEBUG = False
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "testserver"]
    settings.HOMEPOT_MONITORING_TOUCH_SECONDS = 0  # every heartbeat writes its row
    pks = _device_pks()
    results: dict = {"devices": len(pks), "rows_per_device_day": args.rows_per_device_day}
    if not args.skip_write_cost and not args.fill_only:
        results["write_cost"] = measure_write_cost(args, pks)
        log(f"write cost: {results['write_cost']}")
    if args.write_cost_only:
        return results
    filled = filled_days()
    biggest = max(args.days)
    if not args.no_fill:
        results["fill_seconds"] = fill_to(biggest, args.rows_per_device_day, filled, jobs=args.fill_jobs)
    if filled:
        results["device_rows_given_last_report"] = note_last_reports(max(filled), args.rows_per_device_day)
    if args.fill_only:
        attach_only(biggest, filled)
        results["partitions"] = sizes()
        return results
    admin = User.objects.filter(username="bench-admin").first() or User.objects.create_superuser(
        "bench-admin", "bench@example.com", "x"
    )
    fleet_snapshot_take()
    results["sizes"] = []
    # Every size once a round, the rounds one after the other: the sizes are compared within
    # minutes of each other on a machine whose load changes by the minute.
    for round_number in range(args.size_rounds):
        for days in args.days:
            attach_only(days, filled)
            stage = {"round": round_number + 1, "days": days, "health_rows": history_rows()}
            if round_number == 0:
                stage["partitions"] = sizes()
            log(f"round {round_number + 1}, {days} days: {stage['health_rows']} rows; measuring")
            stage["ingest"] = measure_ingest(args, pks)
            window_day = today_utc() - datetime.timedelta(days=1)
            stage["reads"] = measure_reads(args, admin, window_day)
            stage["sql"] = measure_sql(args.repeat)
            log(json.dumps(stage, default=str))
            results["sizes"].append(stage)
    attach_only(biggest, filled)
    if biggest >= 2 and not args.skip_retention:
        oldest, next_day = sorted(d for d in filled if d >= today_utc() - datetime.timedelta(days=biggest))[
            :2
        ]
        results["retention"] = measure_retention(args, pks, oldest, next_day)
    return results


def main() -> None:
    args = parse_args()
    env = command_env(args.database)
    if not args.reuse:
        recreate_database(args.database)
        log("migrating and creating the fleet")
        manage(env, "migrate", "--noinput")
        sites = max(1, args.devices // 100)
        manage(
            env, "create_fleet", "--sites", str(sites), "--devices-per-site", "100", "--site-prefix", "soak"
        )
    else:
        manage(env, "migrate", "--noinput")
    setup_django(args.database)
    try:
        results = run(args)
    finally:
        from django.db import connections

        connections.close_all()
        if not (args.keep or args.fill_only):
            drop_database(args.database)
    results["machine"] = machine()
    print(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
