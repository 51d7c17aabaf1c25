"""The MQTT channel and bridge end to end against the local Mosquitto (127.0.0.1:1883)."""

import io
import json
import threading
import time
import uuid

import pytest
from django.core.management import call_command

from devices_app.tests.factories import DeviceFactory
from jobs_app import dispatch, services
from jobs_app.channels import PushError
from jobs_app.channels.mqtt import MqttChannel, connect
from jobs_app.choices import JobStatus
from jobs_app.management.commands.mqtt_bridge import handle_event
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_worker import wait_for
from sites_app.tests.factories import SiteFactory


def bridge_args(seconds=3):
    """A bridge of its own (group, client id, no kept session): other bridges on the shared
    broker, a demo's or another test run's, must not take this test's events."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    return (
        "mqtt_bridge",
        f"--duration={seconds}",
        f"--group={name}",
        f"--client-id={name}",
        "--session-seconds=0",
    )


def mqtt_device(**fields):
    # A fresh id per test: the broker is shared with anything else running on the machine.
    return DeviceFactory(device_id=f"mqtt-{uuid.uuid4().hex[:12]}", push_channel="mqtt", **fields)


@pytest.mark.django_db(transaction=True)
def test_a_job_reaches_an_mqtt_device_and_its_answers_come_back_through_the_bridge(admin_user):
    site = SiteFactory()
    device = mqtt_device(site=site)
    received = []
    subscribed = threading.Event()
    listener = connect()
    listener.on_message = lambda client, userdata, message: received.append(
        (message.topic, json.loads(message.payload), message.qos)
    )
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.subscribe(f"homepot/devices/{device.device_id}/commands", qos=1)
    assert subscribed.wait(10)

    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 0.2})
    assert dispatch.dispatch_pass(job.pk).sent == 1
    wait_for(lambda: received)
    topic, message, qos = received[0]
    delivery = Delivery.objects.get(job=job)
    assert (topic, message["delivery_id"], message["payload"], qos) == (
        f"homepot/devices/{device.device_id}/commands",
        delivery.pk,
        {"tax": 0.2},
        1,
    )

    bridge = threading.Thread(target=call_command, args=bridge_args(), daemon=True)
    bridge.start()
    events = f"homepot/devices/{device.device_id}/events"

    def answered():
        # Re-published until the bridge has it: repeats are harmless by design.
        listener.publish(events, json.dumps({"delivery_id": delivery.pk, "event": "ack"}), qos=1)
        listener.publish(
            events, json.dumps({"delivery_id": delivery.pk, "event": "result", "status": "completed"}), qos=1
        )
        time.sleep(0.2)
        return Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED

    try:
        wait_for(answered)
    finally:
        listener.loop_stop()
        listener.disconnect()
        bridge.join(timeout=15)
    delivery.refresh_from_db()
    assert delivery.status == "completed" and delivery.acknowledged_at is not None


@pytest.mark.django_db
def test_bridge_events_act_only_on_the_named_devices_own_deliveries(admin_user):
    site = SiteFactory()
    mine, other = mqtt_device(site=site), mqtt_device(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    services.deliveries_materialise(job.pk)
    theirs = Delivery.objects.get(job=job, device=other)

    def event(device, body):
        return handle_event(f"homepot/devices/{device.device_id}/events", json.dumps(body).encode())

    assert event(mine, {"delivery_id": theirs.pk, "event": "ack"}) == "ignored: unknown delivery or no change"
    assert event(other, {"delivery_id": theirs.pk, "event": "ack"}) == "acknowledged"
    assert (
        event(other, {"delivery_id": theirs.pk, "event": "result", "status": "done"}) == "ignored: bad status"
    )
    assert event(other, {"delivery_id": "x"}) == "ignored: malformed"
    assert handle_event("homepot/devices/x/other", b"{}") == "ignored: topic"
    theirs.refresh_from_db()
    assert theirs.status == "acknowledged"


def test_an_unreachable_broker_is_a_push_error_to_retry(settings):
    settings.HOMEPOT_JOBS_MQTT_PORT = 1  # nothing listens there
    with pytest.raises(PushError, match="unreachable"):
        MqttChannel().push([])


@pytest.mark.django_db(transaction=True)
def test_simulated_mqtt_terminals_answer_through_the_bridge(admin_user):
    site = SiteFactory()
    device = mqtt_device(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    dispatch.dispatch_pass(job.pk)
    delivery = Delivery.objects.get(job=job)
    threads = [
        threading.Thread(target=call_command, args=bridge_args(), daemon=True),
        threading.Thread(
            target=call_command,
            args=("simulate_fleet", "--channel=mqtt", "--devices=1", "--work-seconds=0", "--duration=3"),
            kwargs={"site": site.site_id},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    publisher = connect()
    command = json.dumps(
        {"delivery_id": delivery.pk, "job_id": job.pk, "action": "update_config", "payload": {}}
    )

    def answered():
        # The first push may precede the simulator's subscription; a repeat is harmless.
        publisher.publish(f"homepot/devices/{device.device_id}/commands", command, qos=1)
        time.sleep(0.2)
        return Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED

    try:
        wait_for(answered)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        for thread in threads:
            thread.join(timeout=15)


def listen(device_ids):
    """A broker client subscribed to these devices' commands topics; returns (client, messages)."""
    received = []
    subscribed = threading.Event()
    listener = connect()
    listener.on_message = lambda client, userdata, message: received.append(
        (message.topic.split("/")[2], json.loads(message.payload))
    )
    listener.on_subscribe = lambda *args: subscribed.set()
    listener.subscribe([(f"homepot/devices/{device_id}/commands", 1) for device_id in device_ids])
    assert subscribed.wait(10)
    return listener, received


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_job_tells_mqtt_devices_that_have_the_work_to_drop_it(admin_user, admin_api):
    site = SiteFactory()
    # Deliveries go out in device order: the polling device and `sent` get the work, `held`
    # waits behind the site's in-flight limit of 2.
    polling = DeviceFactory(site=site, push_channel="poll")
    sent, held = mqtt_device(site=site), mqtt_device(site=site)
    listener, received = listen([sent.device_id, held.device_id])
    job = services.job_create(
        actor=admin_user, site=site, action="update_config", max_in_flight_per_site=2, batch_size=1
    )
    dispatch.dispatch_pass(job.pk)
    statuses = dict(Delivery.objects.filter(job=job).values_list("device__device_id", "status"))
    assert statuses == {polling.device_id: "sent", sent.device_id: "sent", held.device_id: "pending"}
    delivery = Delivery.objects.get(job=job, device=sent)
    try:
        wait_for(lambda: received)
        assert admin_api.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 200
        wait_for(lambda: len(received) >= 2)
        time.sleep(0.5)  # nothing more should arrive (`held` never had the work)
    finally:
        listener.loop_stop()
        listener.disconnect()
    assert [(device_id, message["type"]) for device_id, message in received] == [
        (sent.device_id, "deliver"),
        (sent.device_id, "cancel"),
    ]
    assert received[1][1] == {"type": "cancel", "delivery_id": delivery.pk, "job_id": job.pk}
    assert set(Delivery.objects.filter(job=job).values_list("status", flat=True)) == {"cancelled"}


class BrokenChannel(MqttChannel):
    def cancel(self, batch):
        raise PushError("broker down")


@pytest.mark.django_db(transaction=True)
def test_a_cancel_stands_when_the_channel_cannot_tell_the_device(admin_user, settings, caplog):
    settings.HOMEPOT_JOBS_CHANNELS = {"mqtt": "jobs_app.tests.test_mqtt.BrokenChannel"}
    site = SiteFactory()
    mqtt_device(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    services.deliveries_materialise(job.pk)
    services.deliveries_mark_sent(Delivery.objects.filter(job=job).values_list("pk", flat=True))
    services.job_cancel(actor=admin_user, job=job)
    assert Job.objects.get(pk=job.pk).status == JobStatus.CANCELLED
    assert Delivery.objects.get(job=job).status == "cancelled"
    assert "to drop job" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_simulated_mqtt_terminal_drops_a_cancelled_delivery(admin_user):
    site = SiteFactory()
    device = mqtt_device(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    services.deliveries_materialise(job.pk)
    delivery = Delivery.objects.get(job=job)
    out = io.StringIO()
    simulator = threading.Thread(
        target=call_command,
        args=("simulate_fleet", "--channel=mqtt", "--devices=1", "--work-seconds=2", "--duration=4"),
        kwargs={"site": site.site_id, "stdout": out},
        daemon=True,
    )
    simulator.start()
    time.sleep(0.5)  # let it subscribe
    publisher = connect()
    topic = f"homepot/devices/{device.device_id}/commands"
    base = {"delivery_id": delivery.pk, "job_id": job.pk}
    try:
        publisher.publish(topic, json.dumps({**base, "type": "deliver", "action": "x", "payload": {}}), qos=1)
        time.sleep(0.3)
        publisher.publish(topic, json.dumps({**base, "type": "cancel"}), qos=1).wait_for_publish(5)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        simulator.join(timeout=15)
    stats = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (stats["cancelled"], stats["completed"], stats["failed"]) == (1, 0, 0)
