"""Writers that update many device rows take their row locks in device id order, so the
offline sweep and another host's heartbeat-buffer flush or health drain over the same devices
never deadlock (issue 13: 6 monitoring_tick failures in a multi-host run).

Two real database connections (threads) run the real sweep and the real flush; a third one
holds one row for a moment so both statements are caught mid-way with their locks taken,
which made the old lock orders (the sweep's by last_seen or heap position, the flush's by
its id list) deadlock every time.
"""

import contextlib
import datetime
import threading
import time

import pytest
from django.db import connection, connections, transaction
from django.db.backends.signals import connection_created
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from monitoring_app import health_buffer, seen_buffer
from monitoring_app.choices import HealthStatus
from monitoring_app.ingest import HealthReport
from monitoring_app.models import DeviceStatusChange, MonitoringState
from monitoring_app.sweep import sweep_offline
from monitoring_app.tests.test_heartbeat_fast_path import wsgi_post

pytestmark = pytest.mark.django_db(transaction=True)

WAIT_SECONDS = 10


def ago(**kwargs):
    return timezone.now() - datetime.timedelta(**kwargs)


class Worker(threading.Thread):
    """Runs `work` on a database connection of its own; keeps its result or its error."""

    def __init__(self, work):
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None

    def run(self):
        try:
            self.result = self.work()
        except Exception as exc:  # noqa: BLE001 - the test reports whatever the writer raised
            self.error = exc
        finally:
            connections.close_all()


def sessions_waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


def until_waiting(count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while sessions_waiting_for_a_lock() < count:
        assert time.monotonic() < deadline, f"expected {count} sessions waiting for a row lock"
        time.sleep(0.02)


def hold_row(pk: int, locked: threading.Event, release: threading.Event):
    def work():
        with transaction.atomic():
            Device.objects.select_for_update().get(pk=pk)
            locked.set()
            release.wait(WAIT_SECONDS)

    return work


def sweep_beside(held, *, buffer, writer):
    """The sweep runs until it waits for `held` (a third session holds that row); then
    `buffer(heard_at)` stores what another host heard from the devices, that host's
    `writer` starts writing it to their rows and waits too; then `held` is let go. Returns
    both, finished, and when the devices were heard."""
    locked, release = threading.Event(), threading.Event()
    holder = Worker(hold_row(held.pk, locked, release))
    holder.start()
    assert locked.wait(WAIT_SECONDS)
    sweep = Worker(sweep_offline)
    sweep.start()  # its own flush finds the buffer empty
    until_waiting(1)
    heard_at = timezone.now()
    buffer(heard_at)
    other = Worker(writer)
    other.start()
    until_waiting(2)
    release.set()
    for worker in (holder, sweep, other):
        worker.join(WAIT_SECONDS)
    return sweep, other, heard_at


def sweep_beside_flush(held, flushed):
    def note_heartbeats(heard_at):
        for device in flushed:
            assert seen_buffer.note_seen(device.pk, heard_at, None)

    return sweep_beside(held, buffer=note_heartbeats, writer=seen_buffer.flush_seen)


def sweeps_may_run():
    """A sweep that ran 30 s ago, long after monitoring resumed: this one judges devices."""
    MonitoringState.objects.update_or_create(
        pk=1, defaults={"resumed_at": ago(hours=2), "last_sweep_at": ago(seconds=30)}
    )


@contextlib.contextmanager
def planner_without(*methods):
    """Every connection opened meanwhile plans with these methods off (SET enable_<method>)."""

    def turn_off(connection, **kwargs):
        with connection.cursor() as cursor:
            for method in methods:
                cursor.execute(f"SET enable_{method} = off")

    connection_created.connect(turn_off, weak=False)
    try:
        yield
    finally:
        connection_created.disconnect(turn_off)


@pytest.fixture
def large_table_plans():
    """At three rows the planner reads the heap; a fleet's tables are read through their
    indexes: the sweep through (last_seen, status), the flush by primary key in a nested loop."""
    with planner_without("seqscan", "bitmapscan", "hashjoin", "mergejoin"):
        yield


@pytest.fixture
def three_silent_devices():
    """Ids low < middle < high, all online and silent; `middle` the longest. Rewriting `high`
    and then `low` moves their visible versions behind `middle` in the heap, so a scan in
    heap order and one in last_seen order both meet middle, high, low: the opposite of the
    id order for low and middle."""
    low = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=1))
    middle = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=3))
    high = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=2))
    Device.objects.filter(pk=high.pk).update(last_seen=ago(hours=2))
    Device.objects.filter(pk=low.pk).update(last_seen=ago(hours=1))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_app_device")
    sweeps_may_run()
    return low, middle, high


def test_the_sweep_and_a_flush_over_the_same_devices_both_finish(
    large_table_plans, three_silent_devices, sweep_plan
):
    """Both shapes of the sweep: one id-ordered pass, and every row locked first."""
    chosen, expected = sweep_plan
    low, middle, high = three_silent_devices

    # The sweep used to lock middle then wait for high; the flush lock low then wait for middle.
    sweep, flush, heard_at = sweep_beside_flush(held=high, flushed=(low, middle))

    assert sweep.error is None, sweep.error
    assert flush.error is None, flush.error
    assert sweep.result.marked_offline == 3
    assert flush.result == 2
    rows = {row.pk: row for row in Device.objects.filter(pk__in=[low.pk, middle.pk, high.pk])}
    assert {row.status for row in rows.values()} == {DeviceStatus.OFFLINE}
    assert rows[low.pk].last_seen == rows[middle.pk].last_seen == heard_at
    assert chosen == [expected]


def test_the_sweep_and_a_health_drain_over_the_same_devices_both_finish(
    large_table_plans, three_silent_devices, settings
):
    low, middle, high = three_silent_devices
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY = "assume"  # the drain is at stake here

    def buffer_reports(heard_at):
        report = HealthReport(status=HealthStatus.DEGRADED, checked_at=heard_at)
        reports = [(low.pk, report), (middle.pk, report)]
        assert health_buffer.append(received_at=heard_at, device_reports=reports)

    sweep, drain, _heard_at = sweep_beside(
        high, buffer=buffer_reports, writer=lambda: health_buffer.drain(wait=True)
    )

    assert sweep.error is None, sweep.error
    assert drain.error is None, drain.error
    assert sweep.result.marked_offline == 3
    assert drain.result == 2
    health = dict(Device.objects.filter(pk__in=[low.pk, middle.pk]).values_list("pk", "health_status"))
    assert health == {low.pk: HealthStatus.DEGRADED, middle.pk: HealthStatus.DEGRADED}


@pytest.fixture
def hash_join_plans():
    """A flush of 5,000 ids over a large table may hash them and scan the heap."""
    with planner_without("nestloop", "mergejoin", "indexscan", "bitmapscan"):
        yield


def test_a_flush_planned_as_a_hash_join_still_locks_in_id_order(hash_join_plans):
    """A hash join meets the device rows in heap order, not in the order of the flush's ids."""
    first = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=3))
    second = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=2))
    third = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=1))
    Device.objects.filter(pk=first.pk).update(last_seen=ago(hours=3))  # now last in the heap
    sweeps_may_run()

    # In heap order the flush would lock third, then wait for first, which the sweep holds.
    sweep, flush, heard_at = sweep_beside_flush(held=second, flushed=(first, third))

    assert sweep.error is None, sweep.error
    assert flush.error is None, flush.error
    assert sweep.result.marked_offline == 3
    assert flush.result == 2
    assert Device.objects.get(pk=third.pk).last_seen == heard_at


def test_a_heartbeat_read_before_the_sweep_committed_still_sets_its_device_online():
    """The race of devices_app.identity_store's sighting rule: a terminal back from a silence
    reads its row (online, last seen long ago) while the sweep is marking it. Its heartbeat
    is written to the row, not buffered, so it waits for the sweep's lock and then finds the
    device offline: the device ends online, with both transitions, and its identity stored in
    Redis says what the row says."""
    device = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(minutes=10))
    secret = device_credential_issue(actor=None, device=device)[1]
    sweeps_may_run()
    locked, release = threading.Event(), threading.Event()
    holder = Worker(hold_row(device.pk, locked, release))
    holder.start()
    assert locked.wait(WAIT_SECONDS)
    sweep = Worker(sweep_offline)
    sweep.start()
    until_waiting(1)  # the sweep, at the held row
    beat = Worker(lambda: wsgi_post(HTTP_AUTHORIZATION=f"Device {secret}"))
    beat.start()  # reads the row as it was before the sweep, then waits for its lock
    until_waiting(2)
    release.set()
    for worker in (holder, sweep, beat):
        worker.join(WAIT_SECONDS)

    assert sweep.error is None and beat.error is None, (sweep.error, beat.error)
    assert beat.result.status_code == 200
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE
    moves = DeviceStatusChange.objects.filter(device=device).order_by("id")
    assert [(m.old_status, m.new_status) for m in moves] in (
        [("online", "offline"), ("offline", "online")],  # the sweep first, as queued
        [],  # the heartbeat first: the sweep found the row seen and left it
    )
    assert wsgi_post(HTTP_AUTHORIZATION=f"Device {secret}").status_code == 200
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ONLINE
