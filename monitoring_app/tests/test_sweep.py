"""The connectivity sweep and the online/offline boundary, through the task body."""

import datetime

import pytest
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from monitoring_app import sweep
from monitoring_app.models import DeviceStatusChange, MonitoringState
from monitoring_app.sweep import offline_after, sweep_offline
from monitoring_app.tasks import monitoring_tick

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def monitoring_running(settings):
    """Monitoring has been running: the previous sweep was a moment ago, long after a resume."""
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 60
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 120
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )


def seen(seconds_ago: float, **kwargs):
    return DeviceFactory(
        status=kwargs.pop("status", DeviceStatus.ONLINE),
        last_seen=timezone.now() - datetime.timedelta(seconds=seconds_ago),
        **kwargs,
    )


def test_offline_after_is_interval_plus_grace():
    assert offline_after() == datetime.timedelta(seconds=180)


def test_the_boundary_a_device_inside_the_window_stays_online_one_past_it_goes_offline():
    now = timezone.now()
    inside = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(seconds=179))
    at_edge = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(seconds=180))
    past = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(seconds=181))

    result = sweep_offline(now=now)

    statuses = dict(Device.objects.values_list("pk", "status"))
    assert statuses[inside.pk] == "online" and statuses[at_edge.pk] == "online"
    assert statuses[past.pk] == "offline"
    assert result.marked_offline == 1


def test_the_sweep_is_one_statement_and_records_every_transition(django_assert_max_num_queries):
    silent = [seen(600) for _ in range(5)]
    seen(10)

    with django_assert_max_num_queries(11):  # state row, planner, plan check, UPDATE ... INSERT
        result = sweep_offline()

    assert result.marked_offline == 5
    changes = DeviceStatusChange.objects.all()
    assert {c.device_id for c in changes} == {d.pk for d in silent}
    assert {(c.old_status, c.new_status, c.reason) for c in changes} == {("online", "offline", "sweep")}
    assert all(d.connectivity_changed_at for d in Device.objects.filter(status="offline"))


def test_a_repeat_sweep_changes_nothing():
    seen(600)
    sweep_offline()
    assert sweep_offline().marked_offline == 0
    assert DeviceStatusChange.objects.count() == 1


@pytest.mark.parametrize("status", [DeviceStatus.MAINTENANCE, DeviceStatus.UNKNOWN, DeviceStatus.OFFLINE])
def test_devices_not_online_are_left_alone(status):
    device = seen(3600, status=status)
    sweep_offline()
    device.refresh_from_db()
    assert device.status == status
    assert not DeviceStatusChange.objects.exists()


def test_after_the_server_was_down_devices_get_a_fresh_grace_period():
    now = timezone.now()
    MonitoringState.objects.filter(pk=1).update(last_sweep_at=now - datetime.timedelta(hours=2))
    device = seen(7200)  # silent because the server was down, not because it died

    first = sweep_offline(now=now)

    assert first.resumed and first.marked_offline == 0
    device.refresh_from_db()
    assert device.status == "online"
    # Still within the fresh grace period (the sweep keeps running every minute): nothing happens.
    for later in (60, 120, 170):
        assert sweep_offline(now=now + datetime.timedelta(seconds=later)).marked_offline == 0
    # The device had its chance after monitoring resumed and stayed silent: now it is offline.
    assert sweep_offline(now=now + datetime.timedelta(seconds=200)).marked_offline == 1


def test_a_device_that_reports_during_the_fresh_grace_is_never_marked_offline():
    now = timezone.now()
    MonitoringState.objects.filter(pk=1).update(last_sweep_at=now - datetime.timedelta(hours=2))
    device = seen(7200)
    sweep_offline(now=now)
    Device.objects.filter(pk=device.pk).update(last_seen=now + datetime.timedelta(seconds=60))
    sweep_offline(now=now + datetime.timedelta(seconds=100))

    assert sweep_offline(now=now + datetime.timedelta(seconds=200)).marked_offline == 0


def test_the_very_first_sweep_is_a_resume():
    MonitoringState.objects.all().delete()
    seen(7200)
    result = sweep_offline()
    assert result.resumed and result.marked_offline == 0


def test_the_tick_task_body_sweeps_evaluates_and_notifies():
    seen(600)
    outcome = monitoring_tick()
    assert outcome["marked_offline"] == 1
    assert Device.objects.get().status == "offline"


def test_either_plan_marks_the_silent_devices_and_records_each_once(sweep_plan):
    chosen, expected = sweep_plan
    silent = [seen(600) for _ in range(4)]
    reporting = seen(10)
    kept = seen(600, status=DeviceStatus.MAINTENANCE)

    assert sweep_offline().marked_offline == 4

    statuses = dict(Device.objects.values_list("pk", "status"))
    assert [statuses[d.pk] for d in silent] == ["offline"] * 4
    assert (statuses[reporting.pk], statuses[kept.pk]) == ("online", "maintenance")
    recorded = DeviceStatusChange.objects.values_list("device_id", flat=True)
    assert sorted(recorded) == sorted(d.pk for d in silent)
    assert sweep_offline().marked_offline == 0
    assert chosen == [expected, expected]


def test_the_plan_check_knows_an_id_ordered_pass_from_another_plan():
    """The one pass is taken only when its UPDATE meets the rows in id order."""
    tid = {"Node Type": "Tid Scan"}
    by_id = {
        "Node Type": "Subquery Scan",
        "Plans": [{"Node Type": "Sort", "Sort Key": ["devices_app_device.id"]}],
    }
    by_seen = {"Node Type": "Subquery Scan", "Plans": [{"Node Type": "Sort", "Sort Key": ["last_seen"]}]}

    def update(join):
        return {"Node Type": "ModifyTable", "Relation Name": "devices_app_device", "Plans": [join]}

    assert sweep._locks_in_id_order(update({"Node Type": "Nested Loop", "Plans": [by_id, tid]}))
    assert not sweep._locks_in_id_order(update({"Node Type": "Nested Loop", "Plans": [by_seen, tid]}))
    assert not sweep._locks_in_id_order(update({"Node Type": "Hash Join", "Plans": [by_id, tid]}))
    assert not sweep._locks_in_id_order(update({"Node Type": "Nested Loop", "Plans": [tid, by_id]}))
