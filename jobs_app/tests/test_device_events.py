"""Device answers applied in batches (jobs_app.services.answers, through jobs_app.events), as
the MQTT bridge applies them, and
the bridge itself against the local broker: many events at once, and a bridge that dies
before its batch commits losing nothing."""

import json
import threading
import time
import uuid

import pytest
from django.core.management import call_command
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from devices_app.tests.factories import DeviceFactory
from jobs_app import events, services
from jobs_app.channels.mqtt import connect
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.events import DeviceEvent
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_worker import wait_for
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

ACK, RESULT = events.ACK, events.RESULT
COMPLETED, FAILED = DeliveryStatus.COMPLETED, DeliveryStatus.FAILED


def sent_job(admin_user, devices=3, **fields):
    """A job to a fresh site's devices, every delivery sent; returns (job, deliveries)."""
    site = SiteFactory()
    DeviceFactory.create_batch(devices, site=site, push_channel="mqtt")
    job = services.job_create(actor=admin_user, site=site, action="update_config", **fields)
    services.deliveries_materialise(job.pk)
    services.deliveries_mark_sent(Delivery.objects.filter(job=job).values_list("pk", flat=True))
    return job, list(Delivery.objects.filter(job=job).select_related("device").order_by("pk"))


def ack(delivery, device=None):
    return DeviceEvent((device or delivery.device).device_id, delivery.pk, ACK)


def result(delivery, outcome=COMPLETED, **fields):
    return DeviceEvent(delivery.device.device_id, delivery.pk, RESULT, outcome=outcome, **fields)


@pytest.mark.django_db
def test_a_batch_of_answers_finishes_deliveries_and_rolls_each_job_up_once(admin_user):
    job_a, deliveries_a = sent_job(admin_user, devices=3)
    job_b, deliveries_b = sent_job(admin_user, devices=2)
    batch = [ack(d) for d in deliveries_a + deliveries_b]
    batch += [result(d) for d in deliveries_a]
    batch.append(result(deliveries_b[0], FAILED, error="paper jam", details={"code": 7}))

    counts = events.deliveries_apply_events(batch)

    assert counts == {"acknowledged": 5, "completed": 3, "failed": 1, "unchanged": 0}
    job_a.refresh_from_db()
    job_b.refresh_from_db()
    assert job_a.status == JobStatus.COMPLETED
    assert job_b.status == JobStatus.ACKNOWLEDGED  # one delivery still working
    failed = Delivery.objects.get(pk=deliveries_b[0].pk)
    assert (failed.status, failed.last_error, failed.result) == (FAILED, "paper jam", {"code": 7})
    assert failed.acknowledged_at is not None and failed.failed_at is not None
    done = Delivery.objects.get(pk=deliveries_a[0].pk)
    assert done.completed_at is not None and done.last_error == "" and done.result is None
    assert AuditLog.objects.filter(event_type="job.completed", job_id=job_a.pk).count() == 1


@pytest.mark.django_db
def test_a_batch_costs_the_same_statements_for_ten_devices_as_for_two(admin_user):
    def statements(devices):
        _job, deliveries = sent_job(admin_user, devices=devices)
        with CaptureQueriesContext(connection) as queries:
            events.deliveries_apply_events([ack(d) for d in deliveries] + [result(d) for d in deliveries])
        return len(queries)

    assert statements(10) == statements(2)


@pytest.mark.django_db
def test_foreign_unknown_repeated_and_late_answers_change_nothing(admin_user):
    _job, (mine, theirs, third) = sent_job(admin_user, devices=3)
    events.deliveries_apply_events([result(third)])

    counts = events.deliveries_apply_events(
        [
            ack(theirs, device=mine.device),  # another device's delivery
            DeviceEvent("no-such-device", mine.pk, ACK),
            DeviceEvent(mine.device.device_id, 999_999_999, ACK),
            result(third, FAILED),  # already completed
            ack(third),  # an ack after the outcome
            result(mine, COMPLETED),
            result(mine, FAILED),  # a second report of the same delivery in the batch
        ]
    )

    assert counts == {"acknowledged": 0, "completed": 1, "unchanged": 6}
    statuses = dict(
        Delivery.objects.filter(pk__in=[mine.pk, theirs.pk, third.pk]).values_list("pk", "status")
    )
    assert statuses == {mine.pk: COMPLETED, theirs.pk: DeliveryStatus.SENT, third.pk: COMPLETED}


@pytest.mark.django_db
def test_a_late_answer_on_a_timed_out_delivery_is_still_the_truth(admin_user):
    _job, (delivery,) = sent_job(admin_user, devices=1)
    Delivery.objects.filter(pk=delivery.pk).update(status=DeliveryStatus.TIMED_OUT)

    assert events.deliveries_apply_events([result(delivery)])["completed"] == 1
    assert Delivery.objects.get(pk=delivery.pk).status == COMPLETED


@pytest.mark.django_db
def test_failures_in_a_batch_pause_a_job_past_its_threshold(admin_user, settings):
    settings.HOMEPOT_JOBS_FAILURE_MIN_SAMPLE = 2
    job, deliveries = sent_job(admin_user, devices=5, failure_threshold_percent=40)
    events.deliveries_apply_events([result(d, FAILED) for d in deliveries[:3]])

    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert "3 of 3 answers failed" in job.status_reason
    assert AuditLog.objects.filter(event_type="job.paused", job_id=job.pk).count() == 1


def test_malformed_messages_are_named_not_applied():
    parse = events.parse_event
    assert parse("homepot/devices/d1/other", b"{}") == "ignored: topic"
    assert parse("homepot/devices//events", b"{}") == "ignored: topic"
    assert parse("homepot/devices/d1/events", b"not json") == "ignored: malformed"
    assert parse("homepot/devices/d1/events", b'{"delivery_id": 1, "event": "boot"}') == "ignored: event"
    body = b'{"delivery_id": 1, "event": "result", "status": "done"}'
    assert parse("homepot/devices/d1/events", body) == "ignored: bad status"
    assert parse("homepot/devices/d1/events", b'{"delivery_id": 99999999999999999999, "event": "ack"}') == (
        "ignored: malformed"
    )
    assert parse("homepot/devices/d1/events", b'{"delivery_id": -3, "event": "ack"}') == "ignored: malformed"
    assert parse("homepot/devices/d1/events", b'{"delivery_id": "7", "event": "ack"}') == DeviceEvent(
        "d1", 7, ACK
    )


# --- The bridge against the local broker ---------------------------------------------------------


def publish_answers(deliveries):
    """Every device's ack and result, published QoS 1 as fast as the broker takes them."""
    publisher = connect()
    try:
        infos = []
        for delivery in deliveries:
            topic = f"homepot/devices/{delivery.device.device_id}/events"
            infos.append(
                publisher.publish(topic, json.dumps({"delivery_id": delivery.pk, "event": "ack"}), qos=1)
            )
            body = {"delivery_id": delivery.pk, "event": "result", "status": "completed"}
            infos.append(publisher.publish(topic, json.dumps(body), qos=1))
        for info in infos:
            info.wait_for_publish(timeout=20)
    finally:
        publisher.loop_stop()
        publisher.disconnect()


def run_bridge(name, seconds, session_seconds=0, errors=None):
    def target():
        try:
            call_command(
                "mqtt_bridge",
                f"--duration={seconds}",
                f"--group={name}",
                f"--client-id={name}",
                f"--session-seconds={session_seconds}",
            )
        except Exception as exc:  # noqa: BLE001 - the test looks at what stopped the bridge
            if errors is not None:
                errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    time.sleep(0.5)  # let it connect and subscribe
    return thread


@pytest.mark.django_db(transaction=True)
def test_the_bridge_applies_a_burst_of_answers_from_a_whole_site(admin_user):
    job, deliveries = sent_job(admin_user, devices=300)
    bridge = run_bridge(f"test-{uuid.uuid4().hex[:12]}", seconds=8)
    try:
        publish_answers(deliveries)
        wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED, timeout=20)
    finally:
        bridge.join(timeout=30)
    assert Delivery.objects.filter(job=job, status=COMPLETED).count() == 300


@pytest.mark.django_db(transaction=True)
def test_a_bridge_that_dies_before_its_batch_commits_loses_nothing(admin_user, monkeypatch):
    job, deliveries = sent_job(admin_user, devices=20)
    name = f"test-{uuid.uuid4().hex[:12]}"

    def database_down(batch):
        raise OperationalError("the database went away")

    monkeypatch.setattr(events, "deliveries_apply_events", database_down)
    errors = []
    # Keeps its session on the broker (60 s), so what it never acknowledged waits there.
    dying = run_bridge(name, seconds=30, session_seconds=60, errors=errors)
    publish_answers(deliveries)
    dying.join(timeout=30)
    assert errors and isinstance(errors[0], OperationalError)
    assert Delivery.objects.filter(job=job, status=DeliveryStatus.SENT).count() == 20

    monkeypatch.undo()
    # The same bridge comes back (same client id) and is handed the unacknowledged events.
    # Its session is then ended (0 s) so the test leaves nothing behind on the broker.
    restarted = run_bridge(name, seconds=5, session_seconds=60)
    try:
        wait_for(lambda: Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED, timeout=20)
    finally:
        restarted.join(timeout=20)
    run_bridge(name, seconds=0.1, session_seconds=0).join(timeout=10)
    assert Delivery.objects.filter(job=job, status=COMPLETED).count() == 20


@pytest.mark.django_db
def test_one_event_through_the_bridge_helper_says_what_happened(admin_user):
    from jobs_app.management.commands.mqtt_bridge import handle_event

    _job, (delivery,) = sent_job(admin_user, devices=1)
    topic = f"homepot/devices/{delivery.device.device_id}/events"
    assert (
        handle_event(topic, json.dumps({"delivery_id": delivery.pk, "event": "ack"}).encode())
        == "acknowledged"
    )
    body = {"delivery_id": delivery.pk, "event": "result", "status": "failed"}
    assert handle_event(topic, json.dumps(body).encode()) == "failed"
    failed = Delivery.objects.get(pk=delivery.pk)
    assert failed.last_error == events.DEFAULT_FAILURE_ERROR


@pytest.mark.django_db(transaction=True)  # the bridge manages its connection as a process does
def test_an_event_the_database_refuses_is_dropped_and_the_rest_of_its_batch_applied(admin_user):
    from jobs_app.management.commands.mqtt_bridge import Bridge

    _job, (first, second) = sent_job(admin_user, devices=2)
    # A text the database cannot store (PostgreSQL text holds no NUL): without care, the
    # whole batch would fail, go back to the broker and fail again for ever.
    poison = result(first, FAILED, error="bad\x00byte")
    bridge = Bridge.__new__(Bridge)  # the batch logic alone, no broker connection
    bridge.stats = {"events": 0, "batches": 0, "ignored": 0}

    counts = bridge._apply([poison, ack(second)])

    assert counts.get("acknowledged") == 1 and bridge.stats["ignored"] == 1
    assert Delivery.objects.get(pk=first.pk).status == DeliveryStatus.SENT
    assert Delivery.objects.get(pk=second.pk).status == DeliveryStatus.ACKNOWLEDGED


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--batch=0", "--batch must be at least 1"),
        ("--in-flight=70000", "--in-flight is between 1 and 65535"),
    ],
)
def test_the_bridge_refuses_bad_options_before_it_connects(option, message):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("mqtt_bridge", option, "--duration=0.1")
