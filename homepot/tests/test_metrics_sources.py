"""Each metric source of homepot.metrics, read back through GET /metrics after a known
sequence run through the doors that produce it: a real Celery worker (dispatch, failed pushes,
the jobs and monitoring ticks, a task that raises, the notification sender), the agent API
(heartbeats into the Redis buffer), real HTTP and SMTP peers for notifications, and a
Mosquitto of this module's own for the MQTT bridge (so no other client's events reach it).
Counters and histogram counts are compared as deltas; gauges are the tick's exact counts."""

import datetime
import json
import threading
import time
import uuid

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import free_port, mosquitto_running
from homepot.tests.test_metrics import delta, scrape, token, value  # noqa: F401 (fixture)
from jobs_app import dispatch
from jobs_app import services as job_services
from jobs_app import tasks as job_tasks
from jobs_app.channels import get_channel
from jobs_app.channels.mqtt import connect
from jobs_app.choices import DeliveryStatus
from jobs_app.management.commands.mqtt_bridge import Bridge
from jobs_app.models import Delivery
from jobs_app.tests.test_worker import counts, wait_for, worker  # noqa: F401 (fixture)
from monitoring_app import tasks as monitoring_tasks
from monitoring_app.choices import AlertKind
from monitoring_app.models import Alert, MonitoringState, Notification
from monitoring_app.tests.peers import WebhookPeer
from sites_app.tests.factories import SiteFactory


def ago(**kwargs) -> datetime.datetime:
    return timezone.now() - datetime.timedelta(**kwargs)


def monitoring_has_been_running():
    """The sweep ran a moment ago and monitoring resumed long ago: no resume grace."""
    MonitoringState.objects.update_or_create(
        pk=1, defaults={"last_sweep_at": ago(seconds=5), "resumed_at": ago(days=1)}
    )


def runs_of(task) -> float:
    samples = scrape()
    return sum(
        value(samples, "homepot_celery_task_duration_seconds_count", task=task.name, state=state)
        for state in ("SUCCESS", "FAILURE", "RETRY")
    )


def run_task(task, *args) -> None:
    """Enqueue `task` to the real worker and wait until it has run (no result backend here:
    the worker's own run-time histogram says when)."""
    runs = runs_of(task)
    task.apply_async(args=args)
    wait_for(lambda: runs_of(task) > runs)


# --- Deliveries and Celery ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_failed_deferred_and_timed_out_deliveries_and_task_outcomes(token, worker, settings, admin_user):  # noqa: F811
    settings.HOMEPOT_JOBS_PUSH_MAX_ATTEMPTS = 3
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()  # the broker is away: every MQTT push fails
    get_channel("mqtt")._drop(get_channel("mqtt")._client)
    before = scrape()

    # Two MQTT devices: each push fails; attempts 1 and 2 are deferred, the 3rd fails them.
    site = SiteFactory()
    DeviceFactory.create_batch(2, site=site, push_channel="mqtt")
    unreachable = job_services.job_create(actor=admin_user, site=site, action="restart_pos_app")
    wait_for(lambda: counts(unreachable) == {"failed": 2})

    # Two polling devices: one reports a failure, the other never answers and times out.
    site = SiteFactory()
    DeviceFactory.create_batch(2, site=site, push_channel="poll")
    answered = job_services.job_create(actor=admin_user, site=site, action="update_config")
    wait_for(lambda: counts(answered) == {"sent": 2})
    reporting, silent = Delivery.objects.select_related("device").filter(job=answered).order_by("pk")
    job_services.delivery_report(device=reporting.device, delivery_id=reporting.pk, outcome="failed")
    Delivery.objects.filter(pk=silent.pk).update(deadline=ago(seconds=1))  # its deadline has passed
    run_task(job_tasks.jobs_tick)
    assert Delivery.objects.get(pk=silent.pk).status == DeliveryStatus.TIMED_OUT

    # A task that raises (a malformed message), run by the worker.
    run_task(job_tasks.dispatch_job, "not-a-job-id")

    after = scrape()
    mqtt = {"action": "restart_pos_app", "channel": "mqtt"}
    assert delta(before, after, "homepot_deliveries_deferred_total", **mqtt) == 4
    assert delta(before, after, "homepot_deliveries_failed_total", reason="push", **mqtt) == 2
    assert (
        delta(
            before,
            after,
            "homepot_deliveries_failed_total",
            action="update_config",
            channel="poll",
            reason="device",
        )
        == 1
    )
    assert delta(before, after, "homepot_deliveries_timed_out_total", action="update_config") == 1
    dispatcher = "jobs_app.tasks.dispatch_job"
    assert delta(before, after, "homepot_celery_task_failures_total", task=dispatcher) == 1
    assert (
        delta(before, after, "homepot_celery_task_duration_seconds_count", task=dispatcher, state="FAILURE")
        == 1
    )
    assert (
        delta(before, after, "homepot_celery_task_duration_seconds_count", task=dispatcher, state="SUCCESS")
        >= 4
    )
    assert (
        delta(
            before,
            after,
            "homepot_celery_task_duration_seconds_count",
            task="jobs_app.tasks.jobs_tick",
            state="SUCCESS",
        )
        == 1
    )
    assert delta(before, after, "homepot_celery_task_failures_total", task="jobs_app.tasks.jobs_tick") == 0
    # The jobs tick's gauge: both jobs failed (every device out of push attempts; a failure
    # and a time-out out of two devices).
    assert value(after, "homepot_jobs", status="failed") == 2
    assert sum(v for (name, _labels), v in after.items() if name == "homepot_jobs") == 2


# --- Heartbeat buffer, alerts, notifications ------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_buffer_flush_open_alerts_and_notification_outcomes(token, worker, settings):  # noqa: F811
    settings.HOMEPOT_MONITORING_BUFFER_HEARTBEATS = True
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 300
    settings.HOMEPOT_MONITORING_ALERT_ERROR_SECONDS = 60
    settings.HOMEPOT_MONITORING_SITE_OUTAGE_MIN_DEVICES = 2
    settings.HOMEPOT_MONITORING_NOTIFY_MAX_ATTEMPTS = 2
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    monitoring_has_been_running()
    monitoring_tasks.flush_heartbeats()  # nothing of an earlier test left waiting
    before = scrape()

    # Three online devices heartbeat a while after they were last seen: buffered, not written.
    site = SiteFactory()
    SiteMembershipFactory(
        user=UserFactory(email="manager@example.com"), site=site, role=MembershipRole.MANAGER
    )
    beating = DeviceFactory.create_batch(3, site=site, status=DeviceStatus.ONLINE, last_seen=ago(minutes=1))
    for device in beating:
        agent = APIClient()
        agent.credentials(
            HTTP_AUTHORIZATION=f"Device {device_credential_issue(actor=None, device=device)[1]}"
        )
        assert agent.post("/api/v1/agent/heartbeat", {}, format="json").status_code == 200
    assert Device.objects.filter(pk__in=[d.pk for d in beating], last_seen__lt=ago(seconds=30)).count() == 3
    run_task(monitoring_tasks.flush_heartbeats)
    assert Device.objects.filter(pk__in=[d.pk for d in beating], last_seen__lt=ago(seconds=30)).count() == 0
    buffered = scrape()

    # One device offline for 10 minutes and one in error for 2: two alerts open at the tick.
    DeviceFactory(
        site=site,
        status=DeviceStatus.OFFLINE,
        last_seen=ago(minutes=10),
        connectivity_changed_at=ago(minutes=10),
    )
    DeviceFactory(
        site=site, status=DeviceStatus.ERROR, last_seen=ago(seconds=5), connectivity_changed_at=ago(minutes=2)
    )
    with WebhookPeer(script=[500, 503]) as hook:
        settings.HOMEPOT_MONITORING_WEBHOOK_URL = hook.url
        run_task(monitoring_tasks.monitoring_tick)
        assert Alert.objects.filter(resolved_at__isnull=True).count() == 2
        # The tick enqueued the sender; run it (again) until both alerts' mails and webhooks
        # were tried: 2 mails sent, 2 webhooks retrying; then the webhooks' last attempt.
        wait_for(lambda: Notification.objects.filter(status__in=["sent", "retrying"]).count() == 4)
        Notification.objects.filter(status="retrying").update(next_attempt_at=timezone.now())
        run_task(monitoring_tasks.deliver_notifications)
        assert len(hook.received) == 4
    assert len(mail.outbox) == 2
    after = scrape()

    assert value(buffered, "homepot_heartbeat_buffer_depth") == 3
    assert delta(before, buffered, "homepot_heartbeat_buffer_flush_duration_seconds_count") == 1
    assert delta(before, after, "homepot_ingest_accepted_total", kind="heartbeat") == 3
    assert value(after, "homepot_alerts_open", kind=AlertKind.DEVICE_OFFLINE) == 1
    assert value(after, "homepot_alerts_open", kind=AlertKind.DEVICE_ERROR) == 1
    assert value(after, "homepot_alerts_open", kind=AlertKind.SITE_OFFLINE) == 0
    assert value(after, "homepot_alerts_open", kind=AlertKind.DEVICE_UNHEALTHY) == 0
    assert value(after, "homepot_devices", status="online") == 3
    assert value(after, "homepot_devices", status="error") == 1
    assert delta(before, after, "homepot_notifications_total", outcome="sent") == 2
    assert delta(before, after, "homepot_notifications_total", outcome="retrying") == 2
    assert delta(before, after, "homepot_notifications_total", outcome="failed") == 2
    assert delta(before, after, "homepot_notifications_total", outcome="skipped") == 0


# --- The MQTT bridge --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    """An anonymous Mosquitto on a free loopback port for this module: the machine's shared
    broker carries other clients' events, and exact counts need none of them."""
    with mosquitto_running(tmp_path_factory.mktemp("broker")) as port:
        yield port


@pytest.mark.django_db(transaction=True)
def test_bridge_batches_lag_events_and_redeliveries(token, own_broker, settings, admin_user):  # noqa: F811
    settings.HOMEPOT_JOBS_MQTT_PORT = own_broker
    settings.HOMEPOT_MQTT_AUTH = False
    get_channel("mqtt")._drop(get_channel("mqtt")._client)
    site = SiteFactory()
    devices = DeviceFactory.create_batch(3, site=site, push_channel="mqtt")
    job = job_services.job_create(actor=admin_user, site=site, action="update_config")
    assert dispatch.dispatch_pass(job.pk).sent == 3
    first, second, third = Delivery.objects.select_related("device").filter(job=job).order_by("pk")
    device = connect()  # plays every terminal: the topic names the device

    def publish(delivery, body):
        topic = f"homepot/devices/{delivery.device.device_id}/events"
        device.publish(topic, json.dumps({"delivery_id": delivery.pk, **body}), qos=1).wait_for_publish(10)

    before = scrape()
    try:
        # A bridge receives an event and stops before acknowledging it (a crash mid-batch):
        # the broker hands it to the bridge's next session again, marked DUP.
        name = f"metrics-{uuid.uuid4().hex[:8]}"
        crashing = Bridge(client_id=name, group="", session_seconds=30, batch=10, in_flight=10)
        time.sleep(0.5)  # its subscription is made on connect, by the network thread
        publish(first, {"event": "ack"})
        wait_for(lambda: crashing.inbox.qsize() == 1)
        crashing.close()
        # Resuming (not a clean start) takes the kept session; it expires a second after this one.
        resumed = Bridge(client_id=name, group="", session_seconds=1, batch=10, in_flight=10)
        try:
            wait_for(lambda: resumed.inbox.qsize() == 1)
            assert resumed.drain(linger=0.05) == 1
        finally:
            resumed.close()

        # The bridge command takes four good events and one it cannot read.
        bridge = threading.Thread(
            target=call_command,
            args=(
                "mqtt_bridge",
                "--duration=4",
                "--group=",
                f"--client-id={name}-cmd",
                "--session-seconds=0",
            ),
            daemon=True,
        )
        bridge.start()
        time.sleep(1)  # connected and subscribed
        for delivery in (second, third):
            publish(delivery, {"event": "ack"})
            publish(delivery, {"event": "result", "status": "completed"})
        device.publish(f"homepot/devices/{devices[0].device_id}/events", b"not json", qos=1).wait_for_publish(
            10
        )
        wait_for(lambda: counts(job) == {"acknowledged": 1, "completed": 2})
        bridge.join(timeout=15)
    finally:
        device.loop_stop()
        device.disconnect()
    after = scrape()

    assert delta(before, after, "homepot_mqtt_bridge_redeliveries_total") == 1
    assert delta(before, after, "homepot_mqtt_bridge_events_total", outcome="applied") == 5
    assert delta(before, after, "homepot_mqtt_bridge_events_total", outcome="ignored") == 1
    assert delta(before, after, "homepot_mqtt_bridge_batch_size_sum") == 6
    assert 2 <= delta(before, after, "homepot_mqtt_bridge_batch_size_count") <= 6
    assert delta(before, after, "homepot_mqtt_bridge_lag_seconds_count") == 6
    # The redelivered event waited in the resumed bridge only, not since the crash.
    assert delta(before, after, "homepot_mqtt_bridge_lag_seconds_sum") < 6 * 2
    stage = {"action": "update_config", "channel": "mqtt"}
    assert (
        delta(before, after, "homepot_delivery_stage_seconds_count", stage="sent_to_acknowledged", **stage)
        == 3
    )
