"""Periodic tasks of the monitoring app (scheduled in monitoring_app/schedule.py).

Thin: each calls the service that holds the rule. Overlapping runs are harmless: the sweep
locks its state row, alert opening is guarded by unique constraints, each notification is
claimed in the database (FOR UPDATE SKIP LOCKED) by one sender at a time.
"""

import redis
from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum

from devices_app.choices import DeviceStatus
from devices_app.models import Device, SiteDeviceCount
from homepot import metrics
from homepot.redis_clients import redis_client
from monitoring_app import health_buffer
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.checkpoints import checkpoint_write
from monitoring_app.choices import AlertKind
from monitoring_app.models import Alert
from monitoring_app.notifications import notifications_deliver_due
from monitoring_app.partitions import history_partitions_maintain
from monitoring_app.retention import health_history_prune, history_reclaim
from monitoring_app.rollup import fleet_snapshot_take
from monitoring_app.seen_buffer import flush_seen
from monitoring_app.sweep import sweep_offline


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=180)
def monitoring_tick() -> dict:
    """Mark silent devices offline, then open/close alerts (with their pending
    notifications), then take the dashboard's snapshot of the counts (once per bucket, after
    the sweep so it counts the devices as they are now). New alerts enqueue the delivery
    task at once rather than waiting for its beat; sending is not done here, so a slow mail
    server never delays the sweep."""
    sweep = sweep_offline()
    evaluation = alerts_evaluate()
    if evaluation.opened:
        transaction.on_commit(deliver_notifications.delay)
    snapshot_rows = fleet_snapshot_take()
    _export_counts()
    return {
        "marked_offline": sweep.marked_offline,
        "resumed": sweep.resumed,
        "opened": len(evaluation.opened),
        "resolved": len(evaluation.resolved),
        "snapshot_rows": snapshot_rows,
    }


def _export_counts() -> None:
    """Open alerts by kind (every tick: the open alerts' partial index) and devices by status
    (at most every HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS, whichever worker's tick comes
    first) for homepot.metrics, instead of a count per scrape. On PostgreSQL the devices by
    status are the per-site rollup's sum (SiteDeviceCount, exact in every transaction): the
    status is in no index of the device table any more, and counting the devices would read
    the whole heap (before, an index-only scan of (status, id) took 1 s at 1,000,000 devices
    on a busy 2-core machine: bench/bench_fleet_gauges.py, docs/performance.md)."""
    if _device_count_due():
        metrics.set_all(metrics.devices, "status", DeviceStatus.values, _devices_by_status())
    by_kind = dict(Alert.objects.open().order_by().values_list("kind").annotate(n=Count("id")))
    metrics.set_all(metrics.alerts_open, "kind", AlertKind.values, by_kind)


def _devices_by_status() -> dict[str, int]:
    if connection.vendor == "postgresql":
        rows = SiteDeviceCount.objects.order_by().values_list("status").annotate(n=Sum("devices"))
    else:  # no rollup triggers on SQLite
        rows = Device.objects.order_by().values_list("status").annotate(n=Count("id"))
    return {status: int(n) for status, n in rows}


def _device_count_due() -> bool:
    """Claim this period's device count: one Redis SET NX with the period as its expiry, so
    one tick per period counts, whichever worker runs it. Redis away: count (a stale gauge
    would hide an outage from the dashboards)."""
    period = settings.HOMEPOT_MONITORING_DEVICE_COUNT_SECONDS
    if period <= 0:
        return True
    key = f"homepot:metrics:device-count:{connection.settings_dict['NAME']}"
    try:
        return bool(redis_client(settings.REDIS_URL, timeout=0.5).set(key, "1", nx=True, ex=period))
    except redis.RedisError:
        return True


@shared_task(ignore_result=True, soft_time_limit=240, time_limit=300)
def deliver_notifications() -> dict:
    """Send the due alert notifications (each claimed in the database, marked sent only after
    the send succeeded, else retried later with backoff: see monitoring_app.notifications).
    Retries live in the rows, not in Celery, so they survive a worker's restart; several
    runs at once share the work. Returns the count per outcome."""
    return notifications_deliver_due().outcomes


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def flush_heartbeats() -> int:
    """Write the buffered heartbeats to the device rows (set-based, 5,000 rows an UPDATE);
    returns how many."""
    return flush_seen()


@shared_task(ignore_result=True, soft_time_limit=60, time_limit=90)
def drain_health_reports() -> int:
    """Write the buffered health reports to PostgreSQL (exactly once: see
    monitoring_app.health_buffer); returns how many. An overlapping run returns 0 at once."""
    return health_buffer.drain()


@shared_task(ignore_result=True, soft_time_limit=3000, time_limit=3600)
def prune_health_history() -> int:
    """Remove health history past its retention (whole days detached, or batches); one audit
    row per run. Then the detached days' files are removed, which is the slow part (about a
    second a GB) and blocks nobody."""
    removed = health_history_prune()
    history_reclaim()
    return removed


@shared_task(ignore_result=True, soft_time_limit=600, time_limit=900)
def maintain_history_partitions() -> dict:
    """Create the history's day partitions ahead and move what the DEFAULT partition caught
    into partitions of their own (monitoring_app.partitions). Safe to repeat or overlap."""
    report = history_partitions_maintain()
    return {
        "created": len(report.created),
        "moved_days": len(report.moved_days),
        "reclaimed": len(report.reclaimed),
    }


@shared_task(ignore_result=True, soft_time_limit=120, time_limit=180)
def audit_checkpoint() -> int:
    """Append a signed checkpoint of the audit head to HOMEPOT_AUDIT_CHECKPOINT_DIR; returns
    the row count it names. Two runs at once append two lines, both valid."""
    checkpoint, _ = checkpoint_write()
    return checkpoint.count
