"""The history soak measured so that a shared machine's load cannot decide it (issue 11).

    # three databases prepared once (0, 10 and 50 million rows; see docs/performance.md):
    python bench/bench_history_soak.py --database homepot_soak5_0 --fill-only --days 0 --skip-write-cost
    python bench/bench_history_soak.py --database homepot_soak5_10m --fill-only --days 0 1 --skip-write-cost
    python bench/bench_history_soak.py --database homepot_soak5_50m --fill-only --days 0 1 5 \\
        --skip-write-cost --fill-jobs 2
    python bench/bench_soak_interleaved.py --prepare-spare homepot_soak5_50m   # retention's spare day
    # the figures (4-5 minutes with retention; 200 calls a trial in 20 slices):
    python bench/bench_soak_interleaved.py --databases homepot_soak5_0 homepot_soak5_10m \\
        homepot_soak5_50m --trials 21 --retention --json soak.json

One worker process per database (its own Django, its own PostgreSQL backend); this process
asks them in turn, figure by figure, for one trial each, so the three sizes of a figure are
measured side by side (0 / 10 M / 50 M, then the next figure). Only one worker runs at a time.
A trial is `--requests` requests of a read (the same devices and sites at every size) or
`--ops` calls of an ingest service (batches of 50: a fifth as many), cut into `--slices`
slices (no more than the trial has requests or calls) that the sizes take in turns: slice 1
at 0, 10 M, 50 M, slice 2 at 10 M, 50 M, 0, and so on (the order rotating by trial and slice,
so none is always first). The sizes of a trial thus alternate every slice (by default 10
calls, 15-20 ms): a burst of load on the shared machine, or a slow WAL flush, falls on them
alike instead of on whichever size was running (soak5: with 40 calls in one piece, the
single report's and the heartbeat's per-trial ratios spread 0.65-1.5). Per trial and size,
summed over its slices:

- wall time per operation;
- the worker's CPU per operation (the measuring thread's: Django, DRF, psycopg);
- its PostgreSQL backend's CPU per operation, from /proc/<pid>/schedstat (nanoseconds; the
  backend runs on this machine);
- the time the worker thread and the backend waited for a core (schedstat's second field):
  the machine's load, which the history does not change;
- the SQL statements, the worker's garbage collection and the cluster's WAL bytes per
  operation (the WAL is every database's: it tells a trial after a checkpoint, whose first
  change of each page logs the whole page).

Each figure's ratio is taken per trial, between sizes measured seconds apart (50 M ÷ 0, 10 M
÷ 0, 50 M ÷ 10 M), and summarised by its median with a distribution-free 95 % confidence
interval of that median (order statistics of the binomial): a figure is "within 10 %" only
when the whole interval lies in 0.90-1.10, "grows" when it lies above 1.10, else "not shown".
The load moves wall time; the CPU figures move much less; so every verdict is given for wall
time and for CPU (worker + backend) apart.

Then, once per size, each read's history statements (captured from a request) under EXPLAIN
(ANALYZE, BUFFERS): shared buffers, relations scanned, JIT, and the plan's shape (its node
types), for the same devices and sites: what grows with the history shows there, whatever
the load. With `--retention`, on the last database: the spare day attached as the oldest (60 M
rows), removed the retention's way while single reports arrive from 2 threads (detach + audit,
then the files), with the ingest's errors and worst latency; the spare day is then filled
again (`--no-refill` to skip: 2-3 minutes), so the command can be run again.

Today's partition is emptied at the start and given the same rows in every database (50
reports of today for each device read, one in today's first hour for each device of the sites
read: Worker._seed_today), so a read of recent rows finds the same rows at every size and only
the history kept differs; "site_hour_yesterday" (the older soak's figure) reads yesterday's
noon, which holds nothing at 0. Nothing else is written to the history but the ingest trials'
reports (today's partition, ANALYZEd after the seed and every 5 trials: this PostgreSQL runs
without autovacuum). The device table is VACUUMed first in every database (the fill's UPDATE
of every row leaves 100,000 dead versions at 10 M and 50 M, none at 0).
Connection: PGHOST/PGPORT/PGUSER/PGPASSWORD (defaults: 127.0.0.1, 5432, postgres, none).
"""

import argparse
import datetime
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_create_fleet import machine  # noqa: E402

INGEST = ("health", "health_batch", "heartbeat")
READS = (
    "device_latest",
    "device_timeline",
    "site_hour_of_checks",
    "site_hour_yesterday",
    "site_health",
    "fleet_dashboard",
    "admin_health_list",
    "admin_health_list_unhealthy",
    "admin_health_list_any_date",
)
HISTORY_TABLES = ('"monitoring_app_healthcheck', '"monitoring_app_devicestatuschange', "healthcheckoffday")
SPARE_PREFIX = "bench_spare_"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--databases", nargs="+", help="The sizes, smallest first (the first is the base).")
    parser.add_argument("--trials", type=int, default=21, help="Trials per figure and size.")
    parser.add_argument("--requests", type=int, default=4, help="Requests per read trial.")
    parser.add_argument("--ops", type=int, default=200, help="Ingest calls per trial (batches: a fifth).")
    parser.add_argument(
        "--slices",
        type=int,
        default=20,
        help="Each trial in this many slices, the sizes taking turns slice by slice "
        "(at most one request or call each).",
    )
    parser.add_argument("--figures", nargs="+", default=[*INGEST, *READS], choices=[*INGEST, *READS])
    parser.add_argument("--no-explain", action="store_true")
    parser.add_argument(
        "--retention", action="store_true", help="Retention of the spare day (last database)."
    )
    parser.add_argument("--no-refill", action="store_true", help="Do not fill the spare day again after.")
    parser.add_argument("--prepare-spare", metavar="DATABASE", help="Fill the spare day of DATABASE, stop.")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", metavar="DATABASE", help=argparse.SUPPRESS)
    return parser.parse_args()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- statistics ---------------------------------------------------------------------------------


def median_ci(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95 % confidence interval of it: order statistics k
    and n-k+1 with k the largest for which P(Binomial(n, 1/2) < k) <= 2.5 %. Under 6 values
    no such k exists: the interval is then the range."""
    ordered = sorted(values)
    n = len(ordered)
    k, below = 0, 0.0
    while True:
        below += math.comb(n, k) / 2**n
        if below > 0.025:
            break
        k += 1
    lower, upper = (ordered[k - 1], ordered[n - k]) if k >= 1 else (ordered[0], ordered[-1])
    return statistics.median(ordered), lower, upper


def verdict(low: float, high: float) -> str:
    if low >= 0.9 and high <= 1.1:
        return "within 10 %"
    if low > 1.1:
        return "grows"
    if high < 0.9:
        return "faster"
    return "not shown"


# --- the worker: one database, one Django -------------------------------------------------------


class Worker:
    """Runs in its own process on one database. Keeps one PostgreSQL connection (the test
    clients do not close it), so one backend serves every trial and its CPU can be read."""

    def __init__(self, database: str):
        from bench.bench_create_fleet import setup_django

        os.environ.setdefault("CONN_MAX_AGE", "3600")
        setup_django(database)
        from django.conf import settings
        from django.test import Client
        from rest_framework.test import APIClient

        from bench.bench_admin_health_list import bench_users

        settings.DEBUG = False
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost", "testserver"]
        settings.HOMEPOT_MONITORING_TOUCH_SECONDS = 0  # every heartbeat writes its row
        self.database = database
        admin, _manager = bench_users()
        self.api = APIClient()
        self.api.force_authenticate(admin)
        self.browser = Client()
        self.browser.force_login(admin)
        self.gc_seconds = 0.0
        gc.callbacks.append(self._gc_timer)

    # -- set-up

    def setup(self, window_day: str, seed: int, trials: int, requests: int, ops: int) -> dict:
        """The devices and sites every trial uses (the same at every size: the fleets were
        made alike), and today's partition made, emptied and given the same rows at every
        size (_seed_today), then ANALYZEd."""
        from django.db import connection

        from devices_app.models import Device
        from monitoring_app import partitions
        from monitoring_app.rollup import fleet_snapshot_take
        from sites_app.models import Site

        today = datetime.datetime.now(datetime.UTC).date()
        partitions.history_days_ensure(partitions.HEALTH, [today, today + datetime.timedelta(days=1)])
        partitions.history_days_ensure(partitions.STATUS_CHANGES, [today, today + datetime.timedelta(days=1)])
        rng = random.Random(seed)
        device_ids = sorted(Device.objects.values_list("device_id", flat=True))
        site_ids = sorted(Site.objects.values_list("site_id", flat=True))
        pk_of = dict(Device.objects.values_list("device_id", "pk"))
        count = (trials + 1) * requests
        self.devices = [rng.choice(device_ids) for _ in range(count)]
        self.sites = [rng.choice(site_ids) for _ in range(count)]
        self.ingest_pks = [pk_of[rng.choice(device_ids)] for _ in range((trials + 1) * ops)]
        self.requests = requests
        self.hour_today = _hour_query(datetime.datetime.combine(today, datetime.time(), tzinfo=datetime.UTC))
        self.hour_yesterday = _hour_query(
            datetime.datetime.combine(
                datetime.date.fromisoformat(window_day), datetime.time(12), tzinfo=datetime.UTC
            )
        )
        self._vacuum_devices()
        self._seed_today(sorted({pk_of[d] for d in self.devices}), sorted(set(self.sites)))
        fleet_snapshot_take()
        self.analyze_today()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.backend = cursor.fetchone()[0]
            cursor.execute(
                "SELECT coalesce(sum(c.reltuples), 0)::bigint FROM pg_inherits i JOIN pg_class c "
                "ON c.oid = i.inhrelid WHERE i.inhparent = 'monitoring_app_healthcheck'::regclass"
            )
            rows = cursor.fetchone()[0]
        return {"database": self.database, "health_rows": rows, "backend_pid": self.backend}

    def _vacuum_devices(self) -> None:
        """The device table vacuumed, so that every size starts with the same one: the fill
        gives the devices of the 10 M and 50 M databases their newest report's time (one
        UPDATE of every row) and this PostgreSQL runs without autovacuum, so their tables
        otherwise carry 100,000 dead row versions that the 0 database's has not."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("VACUUM devices_app_device")

    def _seed_today(self, pks: list[int], sites: list[str]) -> None:
        """Today's partition emptied (earlier runs' ingest), then the same rows written at
        every size, so that a read finds the same rows of today whatever the history holds:
        50 reports, one a minute up to a minute ago (closer together just after midnight), of
        each device whose latest check and timeline are read (a fleet reporting every minute:
        the timeline's 50 events are today's at every size); one report in today's first hour of every
        device of the sites read (their hour of checks), every fourth unhealthy (the admin
        list's unhealthy filter). Written by the ingest's health_reports_store."""
        from django.db import connection, transaction
        from django.utils import timezone

        from devices_app.models import Device
        from monitoring_app import partitions
        from monitoring_app.ingest import HealthReport, health_reports_store

        now = timezone.now()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        with connection.cursor() as cursor:
            cursor.execute(f'TRUNCATE "{partitions.HEALTH.day_partition(midnight.date())}"')
        step = min(datetime.timedelta(minutes=1), (now - midnight) / 52)
        reports = [
            (pk, now, HealthReport(status="healthy", checked_at=now - n * step))
            for n in range(50, 0, -1)
            for pk in pks
        ]
        site_devices = (
            Device.objects.filter(site__site_id__in=sites).order_by("pk").values_list("pk", flat=True)
        )
        reports += [
            (
                pk,
                now,
                HealthReport(
                    status="unhealthy" if n % 4 == 0 else "healthy",
                    checked_at=midnight + datetime.timedelta(seconds=n % 3600),
                ),
            )
            for n, pk in enumerate(site_devices)
        ]
        with transaction.atomic():
            health_reports_store(device_reports=reports)

    def analyze_today(self) -> dict:
        from django.db import connection

        from monitoring_app import partitions

        today = datetime.datetime.now(datetime.UTC).date()
        with connection.cursor() as cursor:
            for history in (partitions.HEALTH, partitions.STATUS_CHANGES):
                cursor.execute(f'ANALYZE "{history.day_partition(today)}"')
            cursor.execute("ANALYZE monitoring_app_healthcheckoffday")
            cursor.execute("ANALYZE devices_app_device")
        return {}

    # -- one trial

    def _urls(self, figure: str, trial: int) -> list[str]:
        picks = range(trial * self.requests, (trial + 1) * self.requests)
        return [
            {
                "device_latest": lambda i: f"/api/v1/health-checks?device={self.devices[i]}&page_size=1",
                "device_timeline": lambda i: f"/api/v1/fleet/devices/{self.devices[i]}/timeline",
                "site_hour_of_checks": lambda i: (
                    f"/api/v1/health-checks?site={self.sites[i]}{self.hour_today}"
                ),
                "site_hour_yesterday": lambda i: (
                    f"/api/v1/health-checks?site={self.sites[i]}{self.hour_yesterday}"
                ),
                "site_health": lambda i: f"/api/v1/sites/{self.sites[i]}/health",
                "fleet_dashboard": lambda i: "/admin/monitoring_app/alert/fleet/",
                "admin_health_list": lambda i: "/admin/monitoring_app/healthcheck/",
                "admin_health_list_unhealthy": lambda i: (
                    "/admin/monitoring_app/healthcheck/?status__exact=unhealthy"
                ),
                "admin_health_list_any_date": lambda i: "/admin/monitoring_app/healthcheck/?window=all",
            }[figure](i)
            for i in picks
        ]

    def _get(self, figure: str, url: str):
        client = self.browser if figure.startswith(("admin", "fleet")) else self.api
        response = client.get(url, HTTP_HOST="localhost")
        if response.status_code != 200:
            raise RuntimeError(f"{url}: HTTP {response.status_code}: {response.content[:300]!r}")
        return response

    def _backend_ns(self) -> tuple[int, int]:
        """The backend's time on a CPU and waiting for one so far, in nanoseconds."""
        return _schedstat(f"/proc/{self.backend}/schedstat")

    def _wal_position(self) -> int:
        """The cluster's WAL insert position in bytes: a slice's WAL per operation, which
        includes every database's writes (and the other helpers'), and jumps after a
        checkpoint (the first change of a page after one logs the whole page)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn() - '0/0'")
            return int(cursor.fetchone()[0])

    def _gc_timer(self, phase: str, _info: dict) -> None:
        """gc.callbacks: the time this process spends collecting garbage, which lands in
        whichever slice a collection happens to start in."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_started

    def trial(self, figure: str, trial: int, ops: int, part: int = 0, parts: int = 1) -> dict:
        """Slice `part` of `parts` of a trial: its share of the trial's ingest calls or
        requests, timed. Totals in milliseconds, with the operations they cover (the
        coordinator adds up a trial's slices)."""
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from bench.bench_history_soak import ingest_once

        if figure in INGEST:
            count = max(1, ops // 5) if figure == "health_batch" else ops
            items = self.ingest_pks[trial * ops : trial * ops + count]
        else:
            items = self._urls(figure, trial)
        items = _share(items, part, parts)
        if figure in INGEST:

            def work():
                for pk in items:
                    ingest_once(figure, pk)
        else:

            def work():
                for url in items:
                    self._get(figure, url)

        wal = self._wal_position()
        me = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        # The capture counts statements by the growth of Django's query log, which stops
        # growing at 9,000 entries: after that every slice would count none.
        connection.queries_log.clear()
        with CaptureQueriesContext(connection) as captured:
            gc_before, backend, mine = self.gc_seconds, self._backend_ns(), _schedstat(me)
            cpu, wall = time.thread_time(), time.perf_counter()
            work()
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            mine_after, backend_after = _schedstat(me), self._backend_ns()
        wal = self._wal_position() - wal
        if connection.connection.info.backend_pid != self.backend:
            raise RuntimeError("the worker's PostgreSQL connection changed during a trial")
        return {
            "operations": len(items),
            "wall_ms": wall * 1000,
            "cpu_ms": cpu * 1000,
            "backend_ms": (backend_after[0] - backend[0]) / 1e6,
            "statements": len(captured.captured_queries),
            "worker_wait_ms": (mine_after[1] - mine[1]) / 1e6,
            "backend_wait_ms": (backend_after[1] - backend[1]) / 1e6,
            "gc_ms": (self.gc_seconds - gc_before) * 1000,
            "wal_bytes": wal,
        }

    # -- plans

    def explain(self, figure: str, trials: list[int]) -> dict:
        """Each history statement of the figure's requests (the first request of each trial
        given) under EXPLAIN (ANALYZE, BUFFERS): per request, summed."""
        from django.db import connection

        from bench.bench_admin_health_list import StatementTimer, explain

        per_request = []
        for trial in trials:
            url = self._urls(figure, trial)[0]
            timer = StatementTimer()
            with connection.execute_wrapper(timer):
                self._get(figure, url)
            history = [
                sql
                for sql, _ in timer.statements
                if any(t in sql for t in HISTORY_TABLES)
                and sql.lstrip(" \n(").upper().startswith(("SELECT", "WITH"))
            ]
            explained = [explain(sql) for sql in history]
            per_request.append(
                {
                    "statements": len(timer.statements),
                    "history_statements": len(history),
                    "buffers": sum(e["buffers"] for e in explained),
                    "scans": sum(e["partitions_scanned"] for e in explained),
                    "planning_ms": round(sum(e["planning_ms"] for e in explained), 2),
                    "execution_ms": round(sum(e["execution_ms"] for e in explained), 2),
                    "jit_ms": round(sum(e["jit_ms"] for e in explained), 1),
                    "shapes": [_shape(e["plan"]) for e in explained],
                }
            )
        return {
            key: statistics.median(r[key] for r in per_request)
            for key in (
                "statements",
                "history_statements",
                "buffers",
                "scans",
                "planning_ms",
                "execution_ms",
                "jit_ms",
            )
        } | {
            "buffers_each": [r["buffers"] for r in per_request],
            "shapes": per_request[0]["shapes"],
        }

    # -- retention

    def retention(self, refill: bool) -> dict:
        return retention_of_spare(refill=refill)


def _share(items: list, part: int, parts: int) -> list:
    """The `part`-th of `parts` contiguous, near-equal pieces of `items`."""
    size, extra = divmod(len(items), parts)
    start = part * size + min(part, extra)
    return items[start : start + size + (part < extra)]


def per_operation(slices: list[dict]) -> dict:
    """A trial's figures per operation from its slices' totals."""
    operations = sum(s["operations"] for s in slices)
    return {key: sum(s[key] for s in slices) / operations for key in slices[0] if key != "operations"} | {
        "slices": len(slices)
    }


def _schedstat(path: str) -> tuple[int, int]:
    """A task's time on a CPU and time waiting in a run queue for one, in nanoseconds (the
    first two fields of /proc/.../schedstat): the wait is the shared machine's share of the
    wall time."""
    on_cpu, waiting, _slices = Path(path).read_text().split()
    return int(on_cpu), int(waiting)


def _hour_query(start: datetime.datetime) -> str:
    until = start + datetime.timedelta(hours=1)
    return f"&since={start:%Y-%m-%dT%H:%M:%SZ}&until={until:%Y-%m-%dT%H:%M:%SZ}"


def _shape(node: dict) -> str:
    """A plan's node types, children in brackets, with the partitions scanned by a node type
    counted ("Index Scan x6"): equal shapes at two sizes mean the same plan."""
    children = [_shape(child) for child in node.get("Plans", [])]
    merged: list[str] = []
    for child in children:
        if merged and merged[-1].split(" x")[0] == child and child.count("[") == 0:
            head, _, count = merged[-1].partition(" x")
            merged[-1] = f"{head} x{int(count or 1) + 1}"
        else:
            merged.append(child)
    name = node["Node Type"]
    return f"{name}[{', '.join(merged)}]" if merged else name


def worker_main(database: str) -> None:
    """Answers one JSON command a line on stdin with one JSON line on stdout."""
    worker = Worker(database)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the answers' pipe
    for line in sys.stdin:
        command = json.loads(line)
        try:
            answer = getattr(worker, command.pop("cmd"))(**command)
        except Exception as exc:  # noqa: BLE001 - the coordinator reports it and stops
            answer = {"error": repr(exc)[:2000]}
        out.write(json.dumps(answer, default=str) + "\n")
        out.flush()


# --- retention of the spare day -----------------------------------------------------------------


def _oldest_filled_day() -> datetime.date:
    from bench.bench_history_soak import filled_days

    return min(filled_days())


def _spare_name(day: datetime.date) -> str:
    from monitoring_app import partitions

    return SPARE_PREFIX + partitions.HEALTH.day_partition(day)


def prepare_spare() -> dict:
    """Fill the day before the oldest filled day (the soak's rows, 10 million at 100,000
    devices), attach it (its indexes built), VACUUM ANALYZE it, then detach it and rename it
    out of the retention's sight (history_reclaim drops detached day tables by their name)."""
    from django.db import connection

    from bench.bench_history_soak import fill_day, vacuum
    from monitoring_app import partitions

    day = _oldest_filled_day() - datetime.timedelta(days=1)
    name = partitions.HEALTH.day_partition(day)
    with connection.cursor() as cursor:
        cursor.execute(f'DROP TABLE IF EXISTS "{_spare_name(day)}"')
        cursor.execute(f'DROP TABLE IF EXISTS "{name}"')
    took = fill_day(day, per_day=100)
    vacuum(name)
    with connection.cursor() as cursor:
        cursor.execute(f'ALTER TABLE monitoring_app_healthcheck DETACH PARTITION "{name}"')
        cursor.execute(f'ALTER TABLE "{name}" RENAME TO "{_spare_name(day)}"')
    return {"spare_day": str(day), "fill_seconds": round(took, 1)}


def retention_of_spare(*, refill: bool) -> dict:
    """The spare day attached as the oldest day (instant: its indexes and CHECK are there),
    then removed the retention's way while single reports arrive: health_history_prune (the
    day detached, the audit row) and history_reclaim (its files), timed apart, with the
    ingest's rate, worst latency and errors during each and the lock waits sampled."""
    from django.db import connection

    from bench.bench_history_soak import IngestLoad, LockWatch, _backend_pid, _device_pks, midnight
    from monitoring_app.retention import health_history_prune, history_reclaim

    day = _oldest_filled_day() - datetime.timedelta(days=1)
    spare = _spare_name(day)
    from monitoring_app import partitions

    name = partitions.HEALTH.day_partition(day)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [spare])
        if not cursor.fetchone()[0]:
            return {"error": f"no spare day {spare}: run --prepare-spare first"}
        cursor.execute(f'ALTER TABLE "{spare}" RENAME TO "{name}"')
        start = time.perf_counter()
        cursor.execute(
            f'ALTER TABLE monitoring_app_healthcheck ATTACH PARTITION "{name}" FOR VALUES FROM (%s) TO (%s)',
            [midnight(day), midnight(day + datetime.timedelta(days=1))],
        )
        attach = time.perf_counter() - start
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = %s", [name])
        day_rows = cursor.fetchone()[0]
    pks = _device_pks()
    pid = _backend_pid()
    with IngestLoad("health", pks, 2) as before:
        time.sleep(2)
    with IngestLoad("health", pks, 2) as detach_load:
        time.sleep(1)
        with LockWatch(pid) as detach_watch:
            start = time.perf_counter()
            removed = health_history_prune(now=midnight(day + datetime.timedelta(days=1)), days=0)
            detach = time.perf_counter() - start
        time.sleep(1)
    with IngestLoad("health", pks, 2) as reclaim_load:
        time.sleep(1)
        with LockWatch(pid) as reclaim_watch:
            start = time.perf_counter()
            reclaimed = history_reclaim()
            reclaim = time.perf_counter() - start
        time.sleep(1)
    result = {
        "day": name,
        "day_rows": day_rows,
        "attach_seconds": round(attach, 3),
        "rows_removed": removed,
        "ingest_before": before.summary(),
        "detach_and_audit_seconds": round(detach, 3),
        "ingest_during_detach": detach_load.summary(),
        "locks_during_detach": detach_watch.summary(),
        "reclaim_seconds": round(reclaim, 3),
        "reclaimed": reclaimed,
        "ingest_during_reclaim": reclaim_load.summary(),
        "locks_during_reclaim": reclaim_watch.summary(),
    }
    if refill:
        result["refill"] = prepare_spare()
    return result


# --- the coordinator ----------------------------------------------------------------------------


class Remote:
    def __init__(self, database: str):
        self.database = database
        self.process = subprocess.Popen(  # noqa: S603 (this file, fixed arguments)
            [sys.executable, str(Path(__file__).resolve()), "--worker", database],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )

    def ask(self, cmd: str, **kwargs) -> dict:
        self.process.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline())
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"{self.database}: {answer['error']}")
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _window_day(databases: list[str]) -> str:
    """The newest filled day of the largest database: the site's hour of checks reads its
    noon at every size (nothing there at 0)."""
    import psycopg

    with psycopg.connect(
        host=os.environ.get("PGHOST", "127.0.0.1"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "postgres"),
        dbname=databases[-1],
    ) as conn:
        rows = conn.execute(
            """SELECT max(right(c.relname, 8)) FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
               WHERE k.conname = 'bench_range' AND c.relname LIKE 'monitoring_app_healthcheck_p%'"""
        ).fetchone()
    if rows[0]:
        return str(datetime.datetime.strptime(rows[0], "%Y%m%d").date())
    return str(datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1))


def summarize(trials: dict, labels: list[str]) -> dict:
    """Per figure: each size's medians (and range) of the per-trial figures, and the per-trial
    ratios against the base (and between the last two sizes) with their 95 % intervals."""
    summary = {}
    base, top = labels[0], labels[-1]
    pairs = [(label, base) for label in labels[1:]] + ([(top, labels[-2])] if len(labels) > 2 else [])
    for figure, by_size in trials.items():
        entry: dict = {"sizes": {}, "ratios": {}}
        for label in labels:
            runs = by_size[label]
            entry["sizes"][label] = {
                key: {
                    "median": round(statistics.median(r[key] for r in runs), 3),
                    "min": round(min(r[key] for r in runs), 3),
                    "max": round(max(r[key] for r in runs), 3),
                }
                for key in (
                    "wall_ms",
                    "cpu_ms",
                    "backend_ms",
                    "statements",
                    "worker_wait_ms",
                    "backend_wait_ms",
                    "gc_ms",
                    "wal_bytes",
                )
            }
        for upper, lower in pairs:
            ratios = {}
            for key, of in (("wall", ("wall_ms",)), ("cpu", ("cpu_ms", "backend_ms"))):
                values = [
                    sum(u[k] for k in of) / sum(v[k] for k in of)
                    for u, v in zip(by_size[upper], by_size[lower], strict=True)
                    if sum(v[k] for k in of) > 0
                ]
                middle, low, high = median_ci(values)
                ratios[key] = {
                    "median": round(middle, 3),
                    "ci95": [round(low, 3), round(high, 3)],
                    "verdict": verdict(low, high),
                }
            entry["ratios"][f"{upper}/{lower}"] = ratios
        summary[figure] = entry
    return summary


def _ratio_cell(ratio: dict) -> str:
    low, high = ratio["ci95"]
    return f"{ratio['median']:.2f} ({low:.2f}-{high:.2f}) {ratio['verdict']}"


def print_table(summary: dict, explains: dict, labels: list[str], load: list) -> None:
    print(f"\nload average during the trials: {load[0]} -> {load[-1]}")
    pairs = list(next(iter(summary.values()))["ratios"])
    header = " | ".join(f"{p} wall (95 %) ; cpu (95 %)" for p in pairs)
    print("figure | " + " | ".join(f"{size} wall ms / cpu+pg ms" for size in labels) + f" | {header}")
    for figure, entry in summary.items():
        cells = []
        for label in labels:
            s = entry["sizes"][label]
            cells.append(
                f"{s['wall_ms']['median']:.2f} / {s['cpu_ms']['median'] + s['backend_ms']['median']:.2f}"
            )
        for pair in pairs:
            r = entry["ratios"][pair]
            cells.append(" ; ".join(_ratio_cell(r[key]) for key in ("wall", "cpu")))
        print(f"{figure} | " + " | ".join(cells))
    if explains:
        print(
            "\nEXPLAIN per request (median): history statements, buffers, scans, "
            "planning+execution ms, JIT ms"
        )
        for figure, by_size in explains.items():
            cells = [
                f"{label}: {e['history_statements']} st, {e['buffers']} buf, {e['scans']} scans, "
                f"{e['planning_ms']:.2f}+{e['execution_ms']:.2f} ms, jit {e['jit_ms']}"
                for label, e in by_size.items()
            ]
            same = len({json.dumps(e["shapes"]) for e in by_size.values()}) == 1
            print(f"{figure} | " + " | ".join(cells) + f" | plans {'alike' if same else 'DIFFER'}")


def one_trial(remotes: list, labels: list[str], figure: str, trial: int, args) -> dict[str, list]:
    """One trial of a figure at every size, in `--slices` slices: slice after slice, each
    size in turn (the order rotating by trial and slice, so none is always first), so that a
    burst of load on the shared machine falls on the sizes alike instead of on the one that
    happened to be running. Returns each size's slices."""
    if figure not in INGEST:
        items = args.requests
    else:
        items = max(1, args.ops // 5) if figure == "health_batch" else args.ops
    parts = max(1, min(args.slices, items))
    slices: dict[str, list] = {label: [] for label in labels}
    for part in range(parts):
        shift = (trial + part) % len(remotes)
        for index in [*range(shift, len(remotes)), *range(shift)]:
            slices[labels[index]].append(
                remotes[index].ask("trial", figure=figure, trial=trial, ops=args.ops, part=part, parts=parts)
            )
    return slices


def coordinate(args) -> dict:
    labels = [db.rsplit("_", 1)[-1] for db in args.databases]
    remotes = [Remote(db) for db in args.databases]
    results: dict = {"databases": args.databases, "machine": machine(), "load": [os.getloadavg()]}
    try:
        window_day = _window_day(args.databases)
        results["setup"] = [
            r.ask(
                "setup",
                window_day=window_day,
                seed=5,
                trials=args.trials,
                requests=args.requests,
                ops=args.ops,
            )
            for r in remotes
        ]
        log(f"set up: {results['setup']}")
        for figure in args.figures:  # warm-up: sessions, plan caches, the pages read
            for remote in remotes:
                remote.ask("trial", figure=figure, trial=args.trials, ops=args.ops)
        trials: dict = {figure: {label: [] for label in labels} for figure in args.figures}
        for trial in range(args.trials):
            for figure in args.figures:
                for label, slices in one_trial(remotes, labels, figure, trial, args).items():
                    trials[figure][label].append(per_operation(slices))
            if trial % 5 == 4:
                for remote in remotes:  # the ingest's rows of today, as autovacuum would
                    remote.ask("analyze_today")
                results["load"].append(os.getloadavg())
                log(f"trial {trial + 1}/{args.trials}, load {os.getloadavg()[0]:.1f}")
        results["load"].append(os.getloadavg())
        results["trials"] = trials
        results["summary"] = summarize(trials, labels)
        results["explain"] = {}
        if not args.no_explain:
            for figure in args.figures:
                if figure in INGEST:
                    continue
                results["explain"][figure] = {
                    label: remote.ask("explain", figure=figure, trials=[0, 1, 2])
                    for label, remote in zip(labels, remotes, strict=True)
                }
        if args.retention:
            log("retention of the spare day on the largest database")
            results["retention"] = remotes[-1].ask("retention", refill=not args.no_refill)
            log(f"retention: {json.dumps(results['retention'], default=str)}")
    finally:
        for remote in remotes:
            remote.close()
    print_table(results["summary"], results["explain"], labels, [round(x[0], 1) for x in results["load"]])
    return results


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args.worker)
        return
    if args.prepare_spare:
        from bench.bench_create_fleet import setup_django

        setup_django(args.prepare_spare)
        print(json.dumps(prepare_spare()))
        return
    results = coordinate(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
