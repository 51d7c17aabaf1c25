"""HOMEPOT's Prometheus metrics: every series the app exports is defined here, so the list in
docs/operations.md, the rules in deploy/prometheus/ and the tests have one place to check.

Label sets are bounded on purpose: route templates, methods, statuses, actions, channels,
task names and reasons, never a device, a job or a raw path. One series per terminal would
be 100,000 series per metric, which is what Prometheus falls over on.

Processes: gunicorn's workers, Celery's pool processes and the MQTT bridge each count in
their own memory unless PROMETHEUS_MULTIPROC_DIR is set at start-up, in which case
prometheus_client writes every value to a memory-mapped file of that directory and
`scrape_registry` adds them up (docs/operations.md, "Metrics"). Gauges set by a periodic
task use `mostrecent`, so the value of the last tick wins whichever process ran it.

Hot paths (the heartbeat, the HTTP middleware) use pre-bound children (`.labels()` looked
up once): an increment is then a lock and an addition, no dictionary of label tuples.
"""

import functools
import os
import time
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

# Latency buckets for HTTP (seconds): a heartbeat answers in a few ms, a console page in ~0.1 s.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Delivery stages: seconds to hours (a device busy selling answers when it can).
_DELIVERY_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
_BATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

# --- HTTP --------------------------------------------------------------------------------
http_requests = Counter(
    "homepot_http_requests",
    "HTTP requests answered, by route template (not the raw path), method and status code.",
    ["route", "method", "status"],
)
http_request_duration = Histogram(
    "homepot_http_request_duration_seconds",
    "Time from the request reaching Django's middleware to its response, by route template and method.",
    ["route", "method"],
    buckets=_HTTP_BUCKETS,
)

# --- Ingest (agent API) ------------------------------------------------------------------
ingest_accepted = Counter(
    "homepot_ingest_accepted",
    "Heartbeats and health reports accepted (kind: heartbeat, health).",
    ["kind"],
)
ingest_refused = Counter(
    "homepot_ingest_refused",
    "Heartbeats and health reports refused, by kind and reason (invalid, unauthenticated, "
    "forbidden, too_large, throttled, unavailable, error).",
    ["kind", "reason"],
)
HEARTBEAT_ACCEPTED = ingest_accepted.labels(kind="heartbeat")
HEALTH_ACCEPTED = ingest_accepted.labels(kind="health")

heartbeat_buffer_depth = Gauge(
    "homepot_heartbeat_buffer_depth",
    "Heartbeats found waiting in the Redis buffer by the last flush.",
    multiprocess_mode="mostrecent",
)
heartbeat_buffer_flush_duration = Histogram(
    "homepot_heartbeat_buffer_flush_duration_seconds",
    "Time one flush of the heartbeat buffer to the device rows took.",
    buckets=_BATCH_BUCKETS,
)

health_buffer_depth = Gauge(
    "homepot_health_buffer_depth",
    "Stream entries (health report requests) waiting in the Redis buffer at the last drain.",
    multiprocess_mode="mostrecent",
)
health_buffer_drain_duration = Histogram(
    "homepot_health_buffer_drain_duration_seconds",
    "Time one drain of the health report buffer to PostgreSQL took.",
    buckets=_BATCH_BUCKETS,
)

# --- Connectivity sweep and fleet --------------------------------------------------------
sweep_duration = Histogram(
    "homepot_sweep_duration_seconds",
    "Time one connectivity sweep took (buffer flush included).",
    buckets=_BATCH_BUCKETS,
)
sweep_marked_offline = Counter(
    "homepot_sweep_devices_marked_offline",
    "Devices the connectivity sweep marked offline.",
)
sweep_last_run = Gauge(
    "homepot_sweep_last_run_timestamp_seconds",
    "Unix time the last connectivity sweep finished.",
    multiprocess_mode="mostrecent",
)
devices = Gauge(
    "homepot_devices",
    "Devices by status, as counted by the last monitoring tick (not per scrape).",
    ["status"],
    multiprocess_mode="mostrecent",
)
alerts_open = Gauge(
    "homepot_alerts_open",
    "Open alerts by kind, as counted by the last monitoring tick.",
    ["kind"],
    multiprocess_mode="mostrecent",
)
notifications = Counter(
    "homepot_notifications",
    "Alert notification send attempts by outcome (sent, failed, retrying, skipped).",
    ["outcome"],
)


class _AfterCommit:
    """A labelled metric whose increments and observations made inside a database transaction
    count only when it commits: the dispatcher counts a batch's deferrals, failures and sends
    inside the batch's transaction, and a batch that rolls back is claimed and counted again
    later. Outside a transaction (or once committed) they count at once."""

    __slots__ = ("_metric",)

    def __init__(self, metric):
        self._metric = metric

    def labels(self, **labels) -> "_AfterCommitChild":
        return _AfterCommitChild(self._metric.labels(**labels))

    def __getattr__(self, name):
        return getattr(self._metric, name)


class _AfterCommitChild:
    __slots__ = ("_child",)

    def __init__(self, child):
        self._child = child

    def inc(self, amount: float = 1) -> None:
        _when_committed(self._child.inc, amount)

    def observe(self, amount: float) -> None:
        _when_committed(self._child.observe, amount)


def _when_committed(record, amount: float) -> None:
    from django.db import connection, transaction

    if connection.in_atomic_block:
        transaction.on_commit(functools.partial(record, amount))
    else:
        record(amount)


# --- Jobs and deliveries -----------------------------------------------------------------
jobs = Gauge(
    "homepot_jobs",
    "Jobs by status, as counted by the last jobs tick.",
    ["status"],
    multiprocess_mode="mostrecent",
)
delivery_stage = _AfterCommit(
    Histogram(
        "homepot_delivery_stage_seconds",
        "Time a delivery spent in one stage (pending_to_sent, sent_to_acknowledged, "
        "acknowledged_to_completed), by job action and push channel.",
        ["stage", "action", "channel"],
        buckets=_DELIVERY_BUCKETS,
    )
)
deliveries_failed = _AfterCommit(
    Counter(
        "homepot_deliveries_failed",
        "Deliveries failed, by action, channel and reason (push: out of push attempts; device: "
        "the device reported a failure).",
        ["action", "channel", "reason"],
    )
)
deliveries_timed_out = Counter(
    "homepot_deliveries_timed_out",
    "Deliveries timed out (no answer before the deadline), by action.",
    ["action"],
)
job_waves = Counter(
    "homepot_job_waves",
    "Waves of staged rollouts decided, by outcome (opened: the last wave passed its gate; "
    "approved: a person opened it; stopped: the last wave fell below its gate, the job paused).",
    ["outcome"],
)
deliveries_deferred = _AfterCommit(
    Counter(
        "homepot_deliveries_deferred",
        "Deliveries left pending after a failed push, to be retried after a backoff.",
        ["action", "channel"],
    )
)
# Not deliveries_deferred above (HOMEPOT's own push retries): these are the devices' "not
# now" answers, by what the job's deferral policy made of each.
device_deferrals = Counter(
    "homepot_device_deferrals",
    "Deferrals asked by devices (a sale in progress), by action, channel and outcome (deferred: "
    "granted; forced, skipped, failed: past the job's deferral limit).",
    ["action", "channel", "outcome"],
)
rollbacks_started = Counter(
    "homepot_rollbacks_started",
    "Rollback jobs created, by trigger (operator, failure_threshold).",
    ["trigger"],
)
dispatch_batch_duration = Histogram(
    "homepot_dispatch_batch_duration_seconds",
    "Time the dispatcher took to push and mark one claimed batch.",
    buckets=_BATCH_BUCKETS,
)

# --- Celery ------------------------------------------------------------------------------
celery_task_duration = Histogram(
    "homepot_celery_task_duration_seconds",
    "Celery task run time, by task name and final state (SUCCESS, FAILURE, RETRY).",
    ["task", "state"],
    buckets=_BATCH_BUCKETS,
)
celery_task_failures = Counter(
    "homepot_celery_task_failures",
    "Celery tasks that raised, by task name.",
    ["task"],
)

# --- MQTT bridge -------------------------------------------------------------------------
mqtt_bridge_batch_size = Histogram(
    "homepot_mqtt_bridge_batch_size",
    "Device events applied together in one bridge batch.",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
mqtt_bridge_lag = Histogram(
    "homepot_mqtt_bridge_lag_seconds",
    "Time from an event reaching the bridge to its batch being committed and acknowledged.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
mqtt_bridge_events = Counter(
    "homepot_mqtt_bridge_events",
    "Device events the bridge handled, by outcome (applied, ignored).",
    ["outcome"],
)
mqtt_bridge_redeliveries = Counter(
    "homepot_mqtt_bridge_redeliveries",
    "Events the broker handed out again (MQTT DUP flag: not acknowledged the first time).",
)


def set_all(gauge: Gauge, label: str, known, counts: dict) -> None:
    """Set a by-status gauge from a {value: count} dict; values not counted are 0, so a status
    that empties shows 0 rather than its last non-zero count."""
    for value in {*known, *counts}:
        gauge.labels(**{label: value}).set(counts.get(value, 0))


class timer:  # noqa: N801 - used like a function: `with metrics.timer(histogram):`
    """Observe the seconds a block took (monotonic clock), also when it raises."""

    __slots__ = ("_child", "_start")

    def __init__(self, child):
        self._child = child

    def __enter__(self):
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self._child.observe(time.perf_counter() - self._start)
        return False


def multiprocess_dir() -> str:
    """The directory the scrape adds up, or "" for this process's own registry."""
    from django.conf import settings

    return settings.HOMEPOT_METRICS_MULTIPROC_DIR


class _TreeCollector(MultiProcessCollector):
    """Adds up the value files of a directory tree: one subdirectory per process kind (web,
    worker, beat, bridge), so processes of different containers sharing a volume never write
    to the same file (their pids may be equal)."""

    def collect(self):
        files = [str(p) for p in Path(self._path).rglob("*.db")]
        return self.merge(files, accumulate=True)


def scrape_registry():
    """The registry a scrape renders: every process's files in multiprocess mode, else this
    process's own metrics."""
    path = multiprocess_dir()
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    if os.path.isdir(path):
        _TreeCollector(registry, path=path)
    return registry


def render() -> tuple[bytes, str]:
    return generate_latest(scrape_registry()), CONTENT_TYPE_LATEST
