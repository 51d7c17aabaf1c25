"""Heartbeats of online devices wait in Redis and reach the device rows in one UPDATE
(monitoring_app.seen_buffer): no row write per heartbeat, nothing lost, and the sweep never
judges a device offline while its heartbeat waits."""

import datetime

import pytest
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from monitoring_app import seen_buffer
from monitoring_app.models import DeviceStatusChange
from monitoring_app.tasks import flush_heartbeats, monitoring_tick

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"


def ago(**kwargs):
    return timezone.now() - datetime.timedelta(**kwargs)


def agent_for(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device_credential_issue(actor=None, device=device)[1]}")
    client.post(HEARTBEAT, {}, format="json")  # first contact: online, credential use recorded
    return client


@pytest.fixture
def online_device():
    device = DeviceFactory(status=DeviceStatus.OFFLINE, last_seen=None)
    device.agent = agent_for(device)
    Device.objects.filter(pk=device.pk).update(last_seen=ago(minutes=2))  # seen a while ago
    return device


def last_seen(device):
    return Device.objects.get(pk=device.pk).last_seen


def test_a_heartbeat_of_an_online_device_writes_no_row_until_the_flush(online_device):
    before = last_seen(online_device)
    stamp = timezone.now() - datetime.timedelta(seconds=3)
    with CaptureQueriesContext(connection) as queries:
        response = online_device.agent.post(HEARTBEAT, {"timestamp": stamp.isoformat()}, format="json")

    assert response.status_code == 200 and response.json()["status"] == "online"
    assert [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith(("UPDATE", "INSERT"))] == []
    assert last_seen(online_device) == before

    assert flush_heartbeats() == 1
    device = Device.objects.get(pk=online_device.pk)
    assert timezone.now() - device.last_seen < datetime.timedelta(seconds=5)
    assert device.reported_at == stamp
    assert flush_heartbeats() == 0  # nothing twice


def test_the_sweep_flushes_first_so_a_device_that_reported_stays_online(online_device, settings):
    Device.objects.filter(pk=online_device.pk).update(last_seen=ago(hours=1))  # silent on the row
    online_device.agent.post(HEARTBEAT, {}, format="json")  # ... but it just reported
    monitoring_tick()  # a first tick only records that monitoring resumed
    from monitoring_app.models import MonitoringState

    MonitoringState.objects.filter(pk=1).update(resumed_at=ago(hours=2), last_sweep_at=ago(seconds=30))
    silent = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(hours=1))

    result = monitoring_tick()

    assert result["marked_offline"] == 1
    assert Device.objects.get(pk=online_device.pk).status == DeviceStatus.ONLINE
    assert Device.objects.get(pk=silent.pk).status == DeviceStatus.OFFLINE
    assert not DeviceStatusChange.objects.filter(device_id=online_device.pk, new_status="offline").exists()


def test_last_seen_never_moves_back(online_device):
    online_device.agent.post(HEARTBEAT, {}, format="json")
    later = timezone.now() + datetime.timedelta(seconds=30)
    Device.objects.filter(pk=online_device.pk).update(last_seen=later)  # a direct write since

    flush_heartbeats()

    assert last_seen(online_device) == later


def test_an_offline_device_is_back_online_at_once_not_after_a_flush(online_device):
    Device.objects.filter(pk=online_device.pk).update(status=DeviceStatus.OFFLINE)

    online_device.agent.post(HEARTBEAT, {}, format="json")

    assert Device.objects.get(pk=online_device.pk).status == DeviceStatus.ONLINE
    assert DeviceStatusChange.objects.filter(device_id=online_device.pk, new_status="online").count() == 2


def test_without_redis_each_heartbeat_is_written_directly(online_device, settings, monkeypatch, caplog):
    monkeypatch.setattr(seen_buffer, "_down_until", 0.0)
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there

    assert online_device.agent.post(HEARTBEAT, {}, format="json").status_code == 200
    assert timezone.now() - last_seen(online_device) < datetime.timedelta(seconds=5)
    assert flush_heartbeats() == 0

    # Redis is then left alone for a while: later heartbeats go straight to the row, and
    # the warning is not repeated for each of them.
    other = DeviceFactory(status=DeviceStatus.OFFLINE, last_seen=None)
    agent = agent_for(other)
    Device.objects.filter(pk=other.pk).update(last_seen=ago(minutes=2))
    agent.post(HEARTBEAT, {}, format="json")
    assert timezone.now() - last_seen(other) < datetime.timedelta(seconds=5)
    assert caplog.text.count("writing device rows directly") == 1


def test_a_failed_flush_keeps_its_batch_for_the_next_one(online_device, monkeypatch):
    online_device.agent.post(HEARTBEAT, {}, format="json")
    real_apply = seen_buffer._apply

    def database_down(entries):
        raise RuntimeError("database went away")

    monkeypatch.setattr(seen_buffer, "_apply", database_down)
    with pytest.raises(RuntimeError):
        flush_heartbeats()
    monkeypatch.setattr(seen_buffer, "_apply", real_apply)

    assert flush_heartbeats() == 1
    assert timezone.now() - last_seen(online_device) < datetime.timedelta(seconds=5)


def test_a_large_flush_is_written_in_chunks_and_misses_nobody(monkeypatch):
    monkeypatch.setattr(seen_buffer, "FLUSH_CHUNK", 2)
    devices = [DeviceFactory(status=DeviceStatus.ONLINE, last_seen=ago(minutes=2)) for _ in range(5)]
    for device in devices:
        assert seen_buffer.note_seen(device.pk, timezone.now(), None)

    with CaptureQueriesContext(connection) as queries:
        assert flush_heartbeats() == 5

    assert sum(q["sql"].lstrip().startswith("UPDATE devices_app_device") for q in queries) == 3
    for device in devices:
        assert timezone.now() - last_seen(device) < datetime.timedelta(seconds=5)


def test_a_flush_finds_its_batches_without_scanning_the_other_keys(online_device, monkeypatch):
    """Every identity of a 100,000-device fleet shares the Redis: a flush (every few seconds,
    and before every sweep) must not walk them, also when a failed flush left a batch."""
    online_device.agent.post(HEARTBEAT, {}, format="json")
    real_apply = seen_buffer._apply
    monkeypatch.setattr(seen_buffer, "_apply", lambda entries: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        flush_heartbeats()
    monkeypatch.setattr(seen_buffer, "_apply", real_apply)

    def walking(*args, **kwargs):
        raise AssertionError("the flush walked the keyspace")

    with monkeypatch.context() as patched:  # the test's own clean-up may walk its prefix
        for method in ("scan_iter", "scan", "keys"):
            patched.setattr(redis.Redis, method, walking)
        assert flush_heartbeats() == 1
        assert flush_heartbeats() == 0  # the batch was forgotten once written

    assert timezone.now() - last_seen(online_device) < datetime.timedelta(seconds=5)
