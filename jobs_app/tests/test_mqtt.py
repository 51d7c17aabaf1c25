"""The MQTT channel and bridge end to end against the local Mosquitto (127.0.0.1:1883)."""

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

    bridge = threading.Thread(target=call_command, args=("mqtt_bridge", "--duration=3"), daemon=True)
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

    assert event(mine, {"delivery_id": theirs.pk, "event": "ack"}) == "ignored: unknown delivery"
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
        threading.Thread(target=call_command, args=("mqtt_bridge", "--duration=3"), daemon=True),
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
