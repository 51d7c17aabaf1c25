"""Any authenticated agent request counts as the device being seen (docs/monitoring.md, "Seen"):
a terminal that only polls for work is alive and is not swept offline."""

import datetime

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from devices_app.choices import DeviceStatus
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.tests.factories import DeliveryFactory
from monitoring_app.choices import ConnectivityReason
from monitoring_app.models import DeviceStatusChange, MonitoringState
from monitoring_app.sweep import sweep_offline
from monitoring_app.tasks import flush_heartbeats

pytestmark = pytest.mark.django_db

COMMANDS = "/api/v1/agent/commands"


@pytest.fixture(autouse=True)
def monitoring_running(settings):
    """The sweep judges (no fresh grace period after a resume)."""
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 60
    settings.HOMEPOT_MONITORING_GRACE_SECONDS = 120
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )


def agent_for(device) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {device_credential_issue(actor=None, device=device)[1]}")
    return client


def seen(minutes_ago: float, status=DeviceStatus.ONLINE):
    return DeviceFactory(status=status, last_seen=timezone.now() - datetime.timedelta(minutes=minutes_ago))


def test_a_device_that_only_polls_stays_online_through_the_sweep():
    device = seen(minutes_ago=2.5)  # about to be judged silent
    assert agent_for(device).get(COMMANDS).status_code == 200
    flush_heartbeats()  # the poll may wait in the heartbeat buffer, like a heartbeat

    # Well past interval + grace after its last heartbeat; but it polled.
    result = sweep_offline(now=timezone.now() + datetime.timedelta(seconds=60))

    assert result.marked_offline == 0
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert timezone.now() - device.last_seen < datetime.timedelta(seconds=30)


def test_an_offline_device_that_polls_is_back_online_and_the_transition_is_recorded():
    device = seen(minutes_ago=30, status=DeviceStatus.OFFLINE)

    agent_for(device).get(COMMANDS)

    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    change = DeviceStatusChange.objects.get(device=device)
    assert (change.old_status, change.new_status, change.reason) == (
        "offline",
        "online",
        ConnectivityReason.REPORT,
    )


def test_acknowledging_and_reporting_work_count_as_seen_too():
    device = seen(minutes_ago=30, status=DeviceStatus.OFFLINE)
    delivery = DeliveryFactory(
        device=device, job__site=device.site, job__status=JobStatus.SENT, status="sent"
    )

    response = agent_for(device).post(f"/api/v1/agent/deliveries/{delivery.pk}/ack")

    assert response.json()["status"] == DeliveryStatus.ACKNOWLEDGED
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE


@pytest.mark.parametrize("status", [DeviceStatus.MAINTENANCE, DeviceStatus.ERROR])
def test_a_poll_does_not_end_maintenance_or_error(status):
    device = seen(minutes_ago=30, status=status)

    agent_for(device).get("/api/v1/agent/me")
    flush_heartbeats()

    device.refresh_from_db()
    assert device.status == status
    assert timezone.now() - device.last_seen < datetime.timedelta(seconds=30)


def test_a_refused_request_is_not_a_sighting():
    device = seen(minutes_ago=30, status=DeviceStatus.OFFLINE)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Device not-a-credential")

    assert client.get(COMMANDS).status_code == 401

    device.refresh_from_db()
    assert device.status == DeviceStatus.OFFLINE
