"""A bridge that dies for good loses no device event (issue 13, docs/operations.md "Several
hosts").

Mosquitto keeps routing a share of a shared subscription's events to a member whose session
persists, connected or not: without more, the events a dead bridge's session collected would
wait there until it came back, and be lost when the session expired. Here two real
`manage.py mqtt_bridge` processes of one group run against a Mosquitto of our own (a free
port), the shared Redis (a group name of this test only) and the test database; one is killed
with SIGKILL, terminals answer every delivery, and the survivor must adopt the dead bridge's
session: every event applied, and the dead member out of the group afterwards.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis
from django.conf import settings
from django.db import connection

from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import mosquitto_running
from jobs_app import dispatch
from jobs_app import services as job_services
from jobs_app.channels import get_channel
from jobs_app.channels.mqtt import connect
from jobs_app.models import Delivery
from jobs_app.tests.test_worker import wait_for
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)

PEER_TIMEOUT = 3
DEVICES = 40


@pytest.fixture
def broker(tmp_path, settings):
    workdir = tmp_path / "broker"
    workdir.mkdir()
    with mosquitto_running(workdir) as port:
        settings.HOMEPOT_JOBS_MQTT_HOST, settings.HOMEPOT_JOBS_MQTT_PORT = "127.0.0.1", port
        settings.HOMEPOT_MQTT_AUTH = False
        channel = get_channel("mqtt")
        channel._drop(channel._client)
        yield port
        channel._drop(channel._client)


class BridgeProcess:
    def __init__(self, port: int, group: str, client_id: str, log):
        db = connection.settings_dict
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "homepot.test_settings",
            "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            "REDIS_URL": settings.REDIS_URL,
            "HOMEPOT_JOBS_MQTT_HOST": "127.0.0.1",
            "HOMEPOT_JOBS_MQTT_PORT": str(port),
            "HOMEPOT_MQTT_AUTH": "false",
            "PYTHONUNBUFFERED": "1",
        }
        self.log, self.client_id = log, client_id
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "manage.py",
                "mqtt_bridge",
                f"--group={group}",
                f"--client-id={client_id}",
                "--session-seconds=600",
                f"--peer-timeout={PEER_TIMEOUT}",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def bridges(broker, tmp_path):
    group = f"test-failover-{uuid.uuid4().hex[:8]}"
    started = [BridgeProcess(broker, group, f"{group}-{name}", tmp_path / f"{name}.log") for name in "ab"]
    wait_for(lambda: all("Bridging" in b.output() for b in started), timeout=60)
    yield started
    for bridge in started:
        bridge.kill()
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(f"homepot:mqtt-bridges:{group}", *client.keys(f"homepot:mqtt-bridges:{group}:*"))


def test_events_published_while_a_bridge_is_dead_reach_the_live_one(bridges, admin_user):
    site = SiteFactory()
    DeviceFactory.create_batch(DEVICES, site=site, push_channel="mqtt")
    job = job_services.job_create(actor=admin_user, site=site, action="update_config")
    assert dispatch.dispatch_pass(job.pk).sent == DEVICES
    deliveries = list(Delivery.objects.select_related("device").filter(job=job))
    dead, alive = bridges
    # Both bridges have taken part in the group and recorded themselves alive.
    time.sleep(PEER_TIMEOUT / 2)
    dead.kill()

    terminals = connect()
    try:

        def answer_all(body: dict) -> None:
            for delivery in deliveries:
                topic = f"homepot/devices/{delivery.device.device_id}/events"
                payload = json.dumps({"delivery_id": delivery.pk, **body})
                terminals.publish(topic, payload, qos=1).wait_for_publish(10)

        # Published while one member of the group is dead: the broker routes a share of
        # these to its session. The live bridge adopts it once the dead one has been silent
        # for the peer timeout.
        answer_all({"event": "ack"})
        wait_for(
            lambda: Delivery.objects.filter(job=job, status="acknowledged").count() == DEVICES,
            timeout=60,
        )
        # The dead bridge's session did hold events (the case this is about).
        wait_for(lambda: "Adopted" in alive.output(), timeout=30)
        adopted = re.search(rf"Adopted {dead.client_id}: (\d+) events", alive.output())
        assert adopted and int(adopted.group(1)) > 0, alive.output()

        # The adopted session was ended and the dead bridge forgotten: it is out of the
        # group, so every later event goes to the live bridge (one routed to a session
        # nobody adopts again would never be applied).
        answer_all({"event": "result", "status": "completed"})
        wait_for(
            lambda: Delivery.objects.filter(job=job, status="completed").count() == DEVICES,
            timeout=60,
        )
        assert len(re.findall(rf"Adopted {dead.client_id}: ", alive.output())) == 1, alive.output()
    finally:
        terminals.loop_stop()
        terminals.disconnect()
