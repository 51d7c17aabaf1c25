"""The connectivity sweep: online devices that stopped reporting become offline.

One set-based statement moves every silent device and records each transition; it costs the
same for 10 devices or 1,000,000 (the last_seen index finds them). The status is in no index
of the device table, so the mass change is a HOT update: no index entry per moved device
(devices_app migration 0011).
"""

import contextlib
import datetime
import json
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from devices_app.choices import DeviceStatus
from homepot import metrics
from monitoring_app import partitions, seen_buffer
from monitoring_app.choices import ConnectivityReason
from monitoring_app.models import MonitoringState

# Every mass writer of device rows locks them in device id order, so the sweep never
# deadlocks with a heartbeat flush on another host. In ONE pass when the plan allows: the
# silent rows' ids sorted, each row then fetched by its tuple id (ctid), locked and updated in
# that order by a nested loop, each page visited once for both. A row changed by someone else
# since the statement began fails `d.ctid = silent.tid` on its new version and is left for
# the next sweep (it was seen, or an operator changed it). Only a plan of that shape locks in
# id order, so the sweep checks the plan first (_locks_in_id_order) and otherwise runs
# LOCKING_SWEEP_SQL.
SWEEP_SQL = """
WITH gone AS (
    UPDATE devices_app_device d SET status = %(offline)s, connectivity_changed_at = %(now)s
    FROM (
        SELECT ctid AS tid FROM devices_app_device
        WHERE status = %(online)s AND (last_seen < %(cutoff)s OR last_seen IS NULL)
        ORDER BY id
    ) AS silent
    WHERE d.ctid = silent.tid
    RETURNING d.id
)
INSERT INTO monitoring_app_devicestatuschange
    (device_id, old_status, new_status, reason, changed_at)
SELECT id, %(online)s, %(offline)s, %(reason)s, %(now)s FROM gone
"""

# Two passes: every silent row locked in id order first (a locking subquery, evaluated whole
# before the UPDATE fetches any row), then the locked rows updated by tuple id. The lock is a
# WAL record and a dirtied page per row more than SWEEP_SQL.
LOCKING_SWEEP_SQL = """
WITH silent AS (
    SELECT ctid AS tid FROM devices_app_device
    WHERE status = %(online)s AND (last_seen < %(cutoff)s OR last_seen IS NULL)
    ORDER BY id FOR UPDATE
),
gone AS (
    UPDATE devices_app_device d SET status = %(offline)s, connectivity_changed_at = %(now)s
    WHERE d.ctid = ANY(ARRAY(SELECT tid FROM silent))
    RETURNING d.id
)
INSERT INTO monitoring_app_devicestatuschange
    (device_id, old_status, new_status, reason, changed_at)
SELECT id, %(online)s, %(offline)s, %(reason)s, %(now)s FROM gone
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
    Writes nothing to Redis: a marked device's identity there stops answering by itself
    (devices_app.identity_store, "The sweep and the sightings").

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
    # The moment is taken before the flush: every heartbeat noted after the flush took the
    # buffer is then later than it, which devices_app.identity_store's sighting rule needs.
    now = now or timezone.now()
    # Heartbeats waiting in the buffer first: a device that reported is not silent.
    seen_buffer.flush_seen()
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
            with sweep_planner(cursor):
                statement = sweep_statement(cursor, params)
                # A savepoint, so that a missing day partition of the transitions is created
                # and the statement run again (the sweep runs even when the scheduler did not).
                partitions.history_write(lambda: cursor.execute(statement, params))
                marked = cursor.rowcount
            if marked >= ANALYZE_AFTER_CHANGES:
                refresh_statistics(cursor)
            return SweepResult(marked_offline=marked, resumed=resumed)


# Planner settings for the sweep's statement: a hash or merge join would read the whole
# table to find 51,000 rows by tuple id, and compiling the statement's expressions (JIT)
# costs more than running them.
_SWEEP_PLANNER = {"enable_hashjoin": "off", "enable_mergejoin": "off", "jit": "off"}


@contextlib.contextmanager
def sweep_planner(cursor):
    """Plan with _SWEEP_PLANNER meanwhile (settings local to the transaction), then put back
    what was set before: a caller's own transaction goes on planning as it did."""
    names = list(_SWEEP_PLANNER)
    reads = ", ".join("current_setting(%s)" for _ in names)
    sets = ", ".join("set_config(%s, %s, true)" for _ in names)
    cursor.execute(f"SELECT {reads}, {sets}", [*names, *(x for n in names for x in (n, _SWEEP_PLANNER[n]))])
    before = cursor.fetchone()[: len(names)]
    yield
    # Not on an error: the rollback of the sweep's transaction (or savepoint) undoes them.
    cursor.execute(f"SELECT {sets}", [x for pair in zip(names, before, strict=True) for x in pair])


def sweep_statement(cursor, params: dict) -> str:
    """The statement that marks the silent devices: SWEEP_SQL when the planner runs it as
    one id-ordered pass, else LOCKING_SWEEP_SQL. To be run under sweep_planner (the plan
    checked is the plan run). Changes nothing; safe to repeat."""
    cursor.execute("EXPLAIN (FORMAT JSON) " + SWEEP_SQL, params)
    (plan,) = cursor.fetchone()
    if isinstance(plan, str):  # a driver that does not decode json
        plan = json.loads(plan)
    return SWEEP_SQL if _locks_in_id_order(plan[0]["Plan"]) else LOCKING_SWEEP_SQL


def _locks_in_id_order(node: dict) -> bool:
    """Whether the plan's UPDATE of the devices is a nested loop whose outer side yields the
    silent rows in id order and whose inner side fetches each by tuple id: the only shape in
    which the rows are locked (when updated) in id order."""
    if node.get("Node Type") == "ModifyTable" and node.get("Relation Name") == "devices_app_device":
        (join,) = node["Plans"]
        if join["Node Type"] != "Nested Loop":
            return False
        outer, inner = join["Plans"]
        return inner["Node Type"] == "Tid Scan" and _in_id_order(outer)
    return any(_locks_in_id_order(child) for child in node.get("Plans", []))


def _in_id_order(node: dict) -> bool:
    while node["Node Type"] == "Subquery Scan":
        (node,) = node["Plans"]
    if node["Node Type"] == "Sort":
        return node["Sort Key"] == ["devices_app_device.id"]
    return (
        node["Node Type"] in ("Index Scan", "Index Only Scan")
        and node["Index Name"] == "devices_app_device_pkey"
        and node["Scan Direction"] == "Forward"
    )


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
