"""The monitoring tick through a real Celery worker (a thread of this process) on Redis.

A queue of its own on a separate Redis database, so it never meets another worker's
messages. Data must be committed for the worker's connection to see it: transaction=True.
"""

import datetime
import time

import pytest
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.tests.celery_worker import running_worker
from monitoring_app import tasks
from monitoring_app.choices import NotificationStatus
from monitoring_app.models import DeviceStatusChange, MonitoringState, Notification
from monitoring_app.tests.peers import WebhookPeer
from sites_app.tests.factories import SiteFactory

TEST_BROKER = "redis://127.0.0.1:6379/13"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker():
    with running_worker(broker=TEST_BROKER, queue_prefix="homepot-monitoring-test"):
        yield


def wait_for(predicate, timeout=20.0):
    """Poll until `predicate()` holds (a generous deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"gave up waiting after {timeout} s")


def test_the_tick_runs_in_a_worker_and_marks_silent_devices_offline(worker):
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=20), resumed_at=now - datetime.timedelta(days=1)
    )
    silent = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now - datetime.timedelta(hours=1))
    alive = DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now)

    tasks.monitoring_tick.delay()

    wait_for(lambda: Device.objects.get(pk=silent.pk).status == DeviceStatus.OFFLINE)
    assert Device.objects.get(pk=alive.pk).status == DeviceStatus.ONLINE
    assert DeviceStatusChange.objects.filter(device=silent, reason="sweep").count() == 1


def test_a_worker_delivers_a_notification_whose_first_send_failed(worker, settings):
    """The tick opens the alert and enqueues the delivery; the webhook answers 500, so the
    notification waits for its retry; once due, the beat's run delivers it."""
    now = timezone.now()
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=20), resumed_at=now - datetime.timedelta(days=1)
    )
    site = SiteFactory()
    DeviceFactory(
        site=site, status=DeviceStatus.OFFLINE, connectivity_changed_at=now - datetime.timedelta(hours=1)
    )
    DeviceFactory(site=site, status=DeviceStatus.ONLINE, last_seen=now)
    DeviceFactory(site=site, status=DeviceStatus.ONLINE, last_seen=now)

    def webhook():
        return Notification.objects.filter(channel="webhook").first()

    with WebhookPeer(script=[500, 200]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        tasks.monitoring_tick.delay()
        wait_for(lambda: webhook() is not None and webhook().status == NotificationStatus.RETRYING)
        assert hook.delivered() == []

        Notification.objects.filter(pk=webhook().pk).update(
            next_attempt_at=timezone.now()
        )  # its wait is over
        tasks.deliver_notifications.delay()
        wait_for(lambda: webhook().status == NotificationStatus.SENT)

    assert webhook().attempts == 2 and len(hook.delivered()) == 1
