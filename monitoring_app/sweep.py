"""The connectivity sweep: online devices that stopped reporting become offline.

One set-based statement moves every silent device and records each transition; it costs the
same for 10 devices or 1,000,000 (the last_seen index finds them). The status is in no index
of the device table, so the mass change is a HOT update: no index entry per moved device
(devices_app migration 0011).
"""

import datetime
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from devices_app import identity_store
from devices_app.choices import DeviceStatus
from homepot import metrics
from monitoring_app import partitions, seen_buffer
from monitoring_app.choices import ConnectivityReason
from monitoring_app.models import MonitoringState

# The rows are locked in device id order first (a locking subquery; an UPDATE alone locks in
# the order its plan meets them, here last_seen order), the order every mass writer of device
# rows keeps, so the sweep never deadlocks with a heartbeat flush on another host.
SWEEP_SQL = """
WITH gone AS (
    UPDATE devices_app_device d SET status = %(offline)s, connectivity_changed_at = %(now)s
    FROM (
        SELECT id FROM devices_app_device
        WHERE status = %(online)s AND (last_seen < %(cutoff)s OR last_seen IS NULL)
        ORDER BY id FOR UPDATE
    ) AS silent
    WHERE d.id = silent.id
        -- the same condition again lets the plan find the rows through the last_seen index
        -- instead of hashing the whole table (3.1 s instead of 2.1 s at 1,000,000)
        AND d.status = %(online)s AND (d.last_seen < %(cutoff)s OR d.last_seen IS NULL)
    RETURNING d.id
)
INSERT INTO monitoring_app_devicestatuschange
    (device_id, old_status, new_status, reason, changed_at)
SELECT id, %(online)s, %(offline)s, %(reason)s, %(now)s FROM gone
RETURNING device_id
"""

# Above this many transitions in one sweep, the planner statistics are refreshed.
ANALYZE_AFTER_CHANGES = 1000


def offline_after() -> datetime.timedelta:
    """How long a device may stay silent and still count as online."""
    return datetime.timedelta(
        seconds=settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS
        + settings.HOMEPOT_MONITORING_GRACE_SECONDS
    )


@dataclass
class SweepResult:
    marked_offline: int
    resumed: bool  # monitoring had stopped for longer than the grace: devices got a fresh one


def _claim_state(now: datetime.datetime) -> tuple[MonitoringState, bool]:
    """Lock the one state row (sweeps run one at a time) and note a resume after a gap."""
    MonitoringState.objects.get_or_create(pk=1)
    state = MonitoringState.objects.select_for_update().get(pk=1)
    gap = datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_GRACE_SECONDS)
    resumed = state.last_sweep_at is None or now - state.last_sweep_at > gap
    if resumed:
        state.resumed_at = now
    state.last_sweep_at = now
    state.save(update_fields=["last_sweep_at", "resumed_at"])
    return state, resumed


def sweep_offline(*, now: datetime.datetime | None = None) -> SweepResult:
    """Mark online devices silent for longer than interval + grace as offline, in ONE
    UPDATE ... RETURNING whose rows are inserted as DeviceStatusChange history.
    Rows are locked in device id order (SWEEP_SQL), as by every mass writer of devices.

    After monitoring itself was stopped (no sweep for longer than the grace, or never),
    every device gets a fresh grace period from the moment it resumed, so a server outage
    does not declare the whole fleet offline. Maintenance devices are left alone.
    Safe to repeat: a device already offline is not touched again.
    """
    with metrics.timer(metrics.sweep_duration):
        result = _sweep(now)
    metrics.sweep_marked_offline.inc(result.marked_offline)
    metrics.sweep_last_run.set(time.time())
    return result


def _sweep(now: datetime.datetime | None) -> SweepResult:
    # Heartbeats waiting in the buffer first: a device that reported is not silent.
    seen_buffer.flush_seen()
    now = now or timezone.now()
    with transaction.atomic():
        state, resumed = _claim_state(now)
        if state.resumed_at and now - state.resumed_at < offline_after():
            return SweepResult(marked_offline=0, resumed=resumed)
        with connection.cursor() as cursor:
            params = {
                "offline": DeviceStatus.OFFLINE,
                "online": DeviceStatus.ONLINE,
                "now": now,
                "cutoff": now - offline_after(),
                "reason": ConnectivityReason.SWEEP,
            }
            # A savepoint, so that a missing day partition of the transitions is created and
            # the statement run again (the sweep runs even when the scheduler did not).
            partitions.history_write(lambda: cursor.execute(SWEEP_SQL, params))
            marked = cursor.rowcount
            # Their heartbeats must come back through PostgreSQL, which sets them online.
            identity_store.forget_devices_on_commit(device_pk for (device_pk,) in cursor.fetchall())
            if marked >= ANALYZE_AFTER_CHANGES:
                refresh_statistics(cursor)
            return SweepResult(marked_offline=marked, resumed=resumed)


def refresh_statistics(cursor) -> None:
    """Re-sample the two columns a mass transition (a region losing its network) skews and
    the alert evaluation plans with, rather than waiting for autovacuum (51,000 of 1,000,000
    rows is under its 10 % threshold).

    A sample of 3,000 rows (statistics target 10, this transaction only) instead of 30,000:
    five statuses and a coarse time histogram need no more, and reading 30,000 random heap
    pages was 0.5-0.8 s of a quiet sweep. site_id is left alone: a sweep moves no device
    between sites, and a small sample would misjudge its 20,000 distinct values.
    """
    cursor.execute("SET LOCAL default_statistics_target = 10")
    cursor.execute("ANALYZE devices_app_device (status, connectivity_changed_at)")
    cursor.execute("SET LOCAL default_statistics_target TO DEFAULT")
