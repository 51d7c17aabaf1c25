"""A terminal acts once per delivery (issue 13: 113,565 MQTT pushes for 95,000 deliveries in a
100,000-device run under heavy load; docs/jobs.md "Delivery guarantee").

The broker here is a real Mosquitto of our own, whose acknowledgements reach the dispatcher
late (a relay holds them): the devices have the message, the dispatcher has no PUBACK within its
wait. Before the fix it took that for a failed push and published the batch again: every
device got it twice.
"""

import contextlib
import io
import json
import socket
import threading
import time

import pytest
from django.core.management import call_command

from homepot.tests.served import mosquitto_running
from jobs_app import dispatch, services
from jobs_app.channels import get_channel
from jobs_app.channels.mqtt import connect
from jobs_app.models import Delivery
from jobs_app.tests.test_mqtt import listen, mqtt_device
from jobs_app.tests.test_worker import wait_for
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)

WORK = {"action": "x", "payload": {}}


@pytest.fixture
def broker(tmp_path, settings):
    """Our own Mosquitto, reached by the dispatcher through SlowAcks; yields the proxy."""
    with mosquitto_running(tmp_path) as port:
        proxy = SlowAcks(port)
        settings.HOMEPOT_JOBS_MQTT_HOST, settings.HOMEPOT_JOBS_MQTT_PORT = "127.0.0.1", proxy.port
        settings.HOMEPOT_MQTT_AUTH = False
        channel = get_channel("mqtt")
        channel._drop(channel._client)
        try:
            yield proxy
        finally:
            channel._drop(channel._client)
            proxy.close()


class SlowAcks:
    """A TCP relay in front of the broker that, while `delay` is set, holds what the broker
    sends back (its PUBACKs) that long: the broker has the message and delivers it at once,
    but its acknowledgement comes late, as from a broker starved of CPU."""

    def __init__(self, broker_port: int):
        self.broker_port, self.delay = broker_port, 0.0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sockets = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.broker_port))
            self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source, target, held):
        while True:
            try:
                data = source.recv(65536)
                if held and self.delay:
                    time.sleep(self.delay)  # the slow acknowledgement itself, not a wait in the test
                target.sendall(data)
            except OSError:
                data = b""
            if not data:
                for sock in (source, target):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                return

    def close(self):
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


def test_a_push_acknowledged_late_by_the_broker_reaches_each_device_once(broker, admin_user, settings):
    settings.HOMEPOT_JOBS_MQTT_PUBLISH_TIMEOUT_SECONDS = 0.5
    settings.HOMEPOT_JOBS_PUSH_BACKOFF_SECONDS = 0.01  # a retry, if any, is due at once
    site = SiteFactory()
    devices = [mqtt_device(site=site) for _ in range(3)]
    listener, received = listen([device.device_id for device in devices])
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 0.2})
    channel = get_channel("mqtt")
    wait_for(channel._connected().is_connected)  # before the slowdown: the broker is slow, not down
    broker.delay = 1.5  # three times the wait for acknowledgements
    first = dispatch.dispatch_pass(job.pk)
    broker.delay = 0.0
    wait_for(lambda: len(received) >= 3)
    again = dispatch.dispatch_pass(job.pk)
    # Everything the dispatcher published is behind this marker on the same connection.
    topic = f"homepot/devices/{devices[0].device_id}/commands"
    channel._connected().publish(topic, '{"marker": 1}', qos=1).wait_for_publish(10)
    wait_for(lambda: any(message == {"marker": 1} for _device, message in received))
    listener.loop_stop()
    listener.disconnect()

    pushes = [message for _device, message in received if "marker" not in message]
    # Before the fix: each delivery id twice (the late-acknowledged push, then its retry).
    assert sorted(message["delivery_id"] for message in pushes) == sorted(
        Delivery.objects.filter(job=job).values_list("pk", flat=True)
    )
    assert (first.sent, first.push_failures, again.sent) == (3, 0, 0)
    assert {message["attempt"] for message in pushes} == {1}
    assert set(Delivery.objects.filter(job=job).values_list("status", flat=True)) == {"sent"}


def test_a_simulated_terminal_given_the_same_push_twice_acts_once(broker, admin_user):
    site = SiteFactory()
    device = mqtt_device(site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 0.2})
    services.deliveries_materialise(job.pk)
    delivery = Delivery.objects.get(job=job)
    out = io.StringIO()
    simulator = threading.Thread(
        target=call_command,
        args=("simulate_fleet", "--channel=mqtt", "--devices=1", "--work-seconds=0", "--duration=3"),
        kwargs={"site": site.site_id, "stdout": out},
        daemon=True,
    )
    simulator.start()
    listener, received = listen([device.device_id])  # sees what the terminal is sent
    push = json.dumps({"type": "deliver", "delivery_id": delivery.pk, "attempt": 1, "job_id": job.pk, **WORK})
    publisher = connect()
    try:
        wait_for(lambda: "Simulating" in out.getvalue())  # printed once it has subscribed
        for _ in range(2):
            publisher.publish(f"homepot/devices/{device.device_id}/commands", push, qos=1).wait_for_publish(5)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        simulator.join(timeout=15)
        listener.loop_stop()
        listener.disconnect()
    stats = json.loads(out.getvalue().strip().splitlines()[-1])
    assert len(received) == 2
    assert (stats["received"], stats["repeated"], stats["acknowledged"], stats["completed"]) == (2, 1, 1, 1)
