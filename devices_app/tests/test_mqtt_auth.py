"""Device logins on MQTT, against a real Mosquitto with the dynamic security plugin.

Each test session starts its own broker (a free loopback port, a temporary directory,
anonymous clients refused) and stops it at the end: the machine's shared development broker
on 1883 is anonymous and is not touched. MQTT 5 throughout, so a refusal is a reason code in
CONNACK, SUBACK or PUBACK rather than a silence.
"""

import base64
import hashlib
import io
import json
import os
import queue
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from django.core.management import call_command
from django.test import override_settings

from devices_app import mqtt_auth
from devices_app.models import DeviceCredential
from devices_app.services import (
    device_create,
    device_credential_issue,
    device_credential_revoke,
    device_delete,
)
from devices_app.tests.factories import DeviceFactory
from homepot.tests.served import MOSQUITTO, free_port, mosquitto_running
from jobs_app import dispatch
from jobs_app import services as job_services
from jobs_app.channels import get_channel
from jobs_app.channels.mqtt import connect
from jobs_app.choices import JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.test_worker import wait_for
from sites_app.tests.factories import SiteFactory

DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN, ADMIN_PASSWORD = "homepot-admin", "admin-" + uuid.uuid4().hex
BRIDGE, BRIDGE_PASSWORD = "homepot-bridge", "bridge-" + uuid.uuid4().hex
NOT_AUTHORIZED = 135  # MQTT 5 reason code 0x87
# PUBACK reason codes that mean the broker took the message: success, and "no matching
# subscribers" (nobody had subscribed yet).
ACCEPTED = (0, 16)


def _auth_settings(port: int) -> dict:
    return {
        "HOMEPOT_JOBS_MQTT_HOST": "127.0.0.1",
        "HOMEPOT_JOBS_MQTT_PORT": port,
        "HOMEPOT_MQTT_AUTH": True,
        "HOMEPOT_MQTT_ADMIN_USERNAME": ADMIN,
        "HOMEPOT_MQTT_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "HOMEPOT_MQTT_BRIDGE_USERNAME": BRIDGE,
        "HOMEPOT_MQTT_BRIDGE_PASSWORD": BRIDGE_PASSWORD,
        "HOMEPOT_MQTT_ADMIN_TIMEOUT_SECONDS": 5,
    }


def _dynsec_config() -> dict:
    """What `mosquitto_ctrl dynsec init <file> <admin>` writes: the admin login, allowed to
    manage the plugin only, and everything else denied by default (PBKDF2-SHA512 hash)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", ADMIN_PASSWORD.encode(), salt, 101, 64)
    control = "$CONTROL/dynamic-security/#"
    return {
        "clients": [
            {
                "username": ADMIN,
                "password": base64.b64encode(digest).decode(),
                "salt": base64.b64encode(salt).decode(),
                "iterations": 101,
                "roles": [{"rolename": "admin"}],
            }
        ],
        "roles": [
            {
                "rolename": "admin",
                "acls": [
                    {"acltype": "publishClientSend", "topic": control, "allow": True},
                    {"acltype": "publishClientReceive", "topic": control, "allow": True},
                    {"acltype": "subscribePattern", "topic": control, "allow": True},
                ],
            }
        ],
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
    }


@pytest.fixture(scope="session")
def dynsec_broker(tmp_path_factory):
    """Our own Mosquitto with dynamic security (admin login only), for the whole session;
    the bridge role and login are provisioned the way an operator does it (mqtt_sync_auth)."""
    for path in (MOSQUITTO, DYNSEC_PLUGIN):
        if not os.path.exists(path):
            pytest.fail(f"{path} is missing: install mosquitto (with its dynamic security plugin).")
    workdir: Path = tmp_path_factory.mktemp("mosquitto")
    (workdir / "dynsec.json").write_text(json.dumps(_dynsec_config()))
    plugin = f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {workdir / 'dynsec.json'}\n"
    with mosquitto_running(workdir, anonymous=False, extra_config=plugin) as port:
        with override_settings(**_auth_settings(port)):
            from devices_app.management.commands.mqtt_sync_auth import Command

            Command(stdout=io.StringIO())._sync_bridge(set(), reset_password=False)
        yield port


@pytest.fixture
def broker(dynsec_broker, settings):
    """Settings pointing at our broker with logins on; the cached MQTT push channel starts
    over on it (and leaves no connection behind for later tests)."""
    for name, value in _auth_settings(dynsec_broker).items():
        setattr(settings, name, value)
    _drop_channel_connection()
    yield dynsec_broker
    _drop_channel_connection()


def _drop_channel_connection():
    channel = get_channel("mqtt")
    if channel._client is not None:
        channel._client.loop_stop()
        channel._client.disconnect()
        channel._client = None


class Session:
    """One MQTT 5 connection, recording what the broker answered."""

    def __init__(self, port, username=None, password=None, *, client_id=None):
        self.connack: queue.Queue = queue.Queue()
        self.acks: queue.Queue = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id if client_id is not None else (username or ""),
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put(rc.value)
        # Whether the broker sent DISCONNECT. (Its reason, 0x98 administrative action, is
        # not told: paho 2.1 reads a DISCONNECT's reason code only when properties follow.)
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(
            "by the broker" if flags.is_disconnect_packet_from_server else "other"
        )
        self.client.on_publish = lambda c, u, mid, rc, props: self.acks.put(("puback", mid, rc.value))
        self.client.on_subscribe = lambda c, u, mid, rcs, props: self.acks.put(("suback", mid, rcs[0].value))
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.client.reconnect_delay_set(60, 60)  # a refused login is not retried during a test
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.code = self.connack.get(timeout=10)

    def subscribe(self, topic) -> int:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._ack("suback", mid)

    def publish(self, topic, body) -> int:
        return self._ack("puback", self.client.publish(topic, json.dumps(body), qos=1).mid)

    def _ack(self, kind, mid) -> int:
        while True:
            got_kind, got_mid, code = self.acks.get(timeout=10)
            if (got_kind, got_mid) == (kind, mid):
                return code

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def sessions():
    opened = []

    def open_session(*args, **kwargs):
        session = Session(*args, **kwargs)
        opened.append(session)
        return session

    yield open_session
    for session in opened:
        session.close()


def device_with_login(admin_user, **fields):
    device = DeviceFactory(device_id=f"mqtt-{uuid.uuid4().hex[:12]}", push_channel="mqtt", **fields)
    _, secret = device_credential_issue(actor=admin_user, device=device)
    return device, secret


def events_of(device):
    return f"homepot/devices/{device.device_id}/events"


def commands_of(device):
    return f"homepot/devices/{device.device_id}/commands"


@pytest.mark.django_db(transaction=True)
def test_a_device_logs_in_with_its_credential_and_a_job_goes_round_trip_through_the_bridge(
    broker, sessions, admin_user
):
    site = SiteFactory()
    device, secret = device_with_login(admin_user, site=site)
    terminal = sessions(broker, device.device_id, secret)
    assert terminal.code == 0
    assert terminal.subscribe(commands_of(device)) == 1  # granted, QoS 1

    # The push channel logs in as the bridge and may publish on any device's commands.
    job = job_services.job_create(actor=admin_user, site=site, action="update_config", payload={"tax": 0.2})
    assert dispatch.dispatch_pass(job.pk).sent == 1
    topic, command = terminal.messages.get(timeout=10)
    delivery = Delivery.objects.get(job=job)
    assert (topic, command["delivery_id"]) == (commands_of(device), delivery.pk)

    name = f"test-{uuid.uuid4().hex[:12]}"
    bridge = threading.Thread(
        target=call_command,
        args=("mqtt_bridge", "--duration=4", f"--group={name}", f"--client-id={name}", "--session-seconds=0"),
        daemon=True,
    )
    bridge.start()

    def answered():
        # Until the bridge has subscribed (the broker then answers "no matching subscribers",
        # a success code in MQTT 5); repeats are harmless by design.
        ack = {"delivery_id": delivery.pk, "event": "ack"}
        assert terminal.publish(events_of(device), ack) in ACCEPTED
        result = {"delivery_id": delivery.pk, "event": "result", "status": "completed"}
        assert terminal.publish(events_of(device), result) in ACCEPTED
        time.sleep(0.2)
        return Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED

    try:
        wait_for(answered)
    finally:
        bridge.join(timeout=15)


@pytest.mark.django_db
def test_a_device_may_not_use_another_devices_topics_or_client_id(broker, sessions, admin_user):
    mine, my_secret = device_with_login(admin_user)
    theirs, _ = device_with_login(admin_user)
    listener = sessions(broker, BRIDGE, BRIDGE_PASSWORD, client_id=f"test-{uuid.uuid4().hex[:12]}")
    assert listener.subscribe("homepot/devices/+/events") == 1

    me = sessions(broker, mine.device_id, my_secret)
    assert me.code == 0
    assert me.publish(events_of(theirs), {"delivery_id": 1, "event": "ack"}) == NOT_AUTHORIZED
    assert me.publish(commands_of(theirs), {"type": "cancel", "delivery_id": 1}) == NOT_AUTHORIZED
    assert me.publish(commands_of(mine), {"type": "cancel", "delivery_id": 1}) == NOT_AUTHORIZED
    assert me.subscribe(commands_of(theirs)) == NOT_AUTHORIZED
    assert me.subscribe(events_of(theirs)) == NOT_AUTHORIZED
    assert me.subscribe("homepot/devices/+/commands") == NOT_AUTHORIZED
    # The broker keeps one client's messages in order: once this one has reached the
    # listener, the refused ones would have reached it before.
    assert me.publish(events_of(mine), {"delivery_id": 2, "event": "ack"}) == 0
    assert listener.messages.get(timeout=10) == (events_of(mine), {"delivery_id": 2, "event": "ack"})
    assert listener.messages.empty()

    # Nor log in under another device's client id (which would drop that device's session).
    assert sessions(broker, mine.device_id, my_secret, client_id=theirs.device_id).code == NOT_AUTHORIZED


@pytest.mark.django_db
def test_anonymous_and_wrong_logins_are_refused(broker, sessions, admin_user):
    device, secret = device_with_login(admin_user)
    other, other_secret = device_with_login(admin_user)
    assert sessions(broker).code == NOT_AUTHORIZED
    assert (
        sessions(broker, device.device_id, secret[:-1] + ("A" if secret[-1] != "A" else "B")).code
        == NOT_AUTHORIZED
    )
    assert sessions(broker, device.device_id, other_secret).code == NOT_AUTHORIZED
    assert sessions(broker, f"mqtt-{uuid.uuid4().hex[:12]}", secret).code == NOT_AUTHORIZED
    assert sessions(broker, device.device_id, secret).code == 0


@pytest.mark.django_db
def test_revoking_a_credential_refuses_it_and_drops_the_open_session(
    broker, sessions, admin_user, django_capture_on_commit_callbacks
):
    device, secret = device_with_login(admin_user)
    terminal = sessions(broker, device.device_id, secret)
    assert terminal.code == 0

    with django_capture_on_commit_callbacks(execute=True):
        assert device_credential_revoke(actor=admin_user, device=device) == 1

    assert terminal.disconnects.get(timeout=10) == "by the broker"
    assert sessions(broker, device.device_id, secret).code == NOT_AUTHORIZED


@pytest.mark.django_db
def test_rotating_a_credential_moves_the_login_to_the_new_secret(broker, sessions, admin_user):
    device, old = device_with_login(admin_user)
    terminal = sessions(broker, device.device_id, old)
    assert terminal.code == 0

    _, new = device_credential_issue(actor=admin_user, device=device)

    assert terminal.disconnects.get(timeout=10) == "by the broker"
    assert sessions(broker, device.device_id, old).code == NOT_AUTHORIZED
    assert sessions(broker, device.device_id, new).code == 0


@pytest.mark.django_db
def test_a_registered_device_logs_in_and_a_deleted_one_no_longer(
    broker, sessions, admin_user, django_capture_on_commit_callbacks
):
    device = device_create(
        actor=admin_user, site=SiteFactory(), device_id=f"mqtt-{uuid.uuid4().hex[:12]}", name="Till"
    )
    assert sessions(broker, device.device_id, device.issued_secret).code == 0

    with django_capture_on_commit_callbacks(execute=True):
        device_delete(actor=admin_user, device=device)

    assert sessions(broker, device.device_id, device.issued_secret).code == NOT_AUTHORIZED
    [role] = mqtt_auth.broker_commands(
        [{"command": "getRole", "rolename": mqtt_auth.device_role(device.device_id)}],
        ok_errors=("Role not found",),
    )
    assert role["error"] == "Role not found"


@pytest.mark.django_db
def test_an_unreachable_broker_refuses_the_rotation_and_keeps_the_old_credential(
    broker, settings, admin_user
):
    device, _ = device_with_login(admin_user)
    before = DeviceCredential.objects.get(device=device, revoked_at__isnull=True)
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()  # nothing listens there

    with pytest.raises(mqtt_auth.BrokerUnavailable):
        device_credential_issue(actor=admin_user, device=device)

    assert DeviceCredential.objects.get(device=device, revoked_at__isnull=True) == before


@pytest.mark.django_db
def test_revocation_does_not_wait_for_an_unreachable_broker_a_task_retries(
    broker, settings, admin_user, django_capture_on_commit_callbacks, monkeypatch
):
    from devices_app import tasks

    device, _ = device_with_login(admin_user)
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()
    enqueued = []
    monkeypatch.setattr(tasks.device_mqtt_login_remove, "delay", enqueued.append)

    with django_capture_on_commit_callbacks(execute=True):
        assert device_credential_revoke(actor=admin_user, device=device) == 1

    assert enqueued == [device.device_id]
    assert not DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).exists()
    settings.HOMEPOT_JOBS_MQTT_PORT = broker
    assert tasks.device_mqtt_login_remove(device.device_id) is True


@pytest.mark.django_db
def test_revocation_with_the_broker_and_the_task_queue_away_still_stands_and_sync_cleans_up(
    broker, sessions, settings, admin_user, django_capture_on_commit_callbacks, caplog
):
    from homepot.tests.celery_worker import celery_broker_away

    device, secret = device_with_login(admin_user)
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()
    with celery_broker_away(), django_capture_on_commit_callbacks(execute=True):  # Redis away too
        assert device_credential_revoke(actor=admin_user, device=device) == 1

    assert not DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).exists()
    assert "run manage.py mqtt_sync_auth" in caplog.text
    settings.HOMEPOT_JOBS_MQTT_PORT = broker
    call_command("mqtt_sync_auth", stdout=io.StringIO())
    assert sessions(broker, device.device_id, secret).code == NOT_AUTHORIZED


@pytest.mark.django_db
def test_sync_removes_logins_without_a_usable_credential_and_names_devices_without_a_login(
    broker, sessions, settings, admin_user
):
    kept, kept_secret = device_with_login(admin_user)
    stale, stale_secret = device_with_login(admin_user)
    # Revoked while the broker was not told (say, logins were off then).
    DeviceCredential.objects.filter(device=stale).update(revoked_at="2026-01-01T00:00Z")
    settings.HOMEPOT_MQTT_AUTH = False
    unprovisioned, _ = device_with_login(admin_user)
    settings.HOMEPOT_MQTT_AUTH = True
    assert sessions(broker, stale.device_id, stale_secret).code == 0

    out = io.StringIO()
    call_command("mqtt_sync_auth", stdout=out)

    assert sessions(broker, stale.device_id, stale_secret).code == NOT_AUTHORIZED
    assert sessions(broker, kept.device_id, kept_secret).code == 0
    assert stale.device_id in out.getvalue()
    assert "no broker login: rotate their credentials to give them one" in out.getvalue()
    assert unprovisioned.device_id in out.getvalue().split("no broker login")[1]
    again = io.StringIO()
    call_command("mqtt_sync_auth", stdout=again)
    assert stale.device_id not in again.getvalue()


@pytest.mark.django_db
def test_with_logins_off_credentials_never_contact_a_broker(settings, admin_user):
    settings.HOMEPOT_MQTT_AUTH = False
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()  # nothing there: a contact would fail
    device = DeviceFactory()
    _, secret = device_credential_issue(actor=admin_user, device=device)
    assert device_credential_revoke(actor=admin_user, device=device) == 1
    device_delete(actor=admin_user, device=device)


@pytest.mark.django_db(transaction=True)
def test_simulated_terminals_log_in_with_their_own_credentials(broker, admin_user):
    site = SiteFactory()
    device = DeviceFactory(device_id=f"mqtt-{uuid.uuid4().hex[:12]}", push_channel="mqtt", site=site)
    job = job_services.job_create(actor=admin_user, site=site, action="update_config")
    name = f"test-{uuid.uuid4().hex[:12]}"
    out = io.StringIO()
    threads = [
        threading.Thread(
            target=call_command,
            args=(
                "mqtt_bridge",
                "--duration=6",
                f"--group={name}",
                f"--client-id={name}",
                "--session-seconds=0",
            ),
            daemon=True,
        ),
        threading.Thread(
            target=call_command,
            args=("simulate_fleet", "--channel=mqtt", "--devices=1", "--work-seconds=0", "--duration=6"),
            kwargs={"site": site.site_id, "stdout": out},
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    # The simulator issues the terminal's credential, which creates its login.
    wait_for(lambda: DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).exists())

    job_services.deliveries_materialise(job.pk)
    delivery = Delivery.objects.get(job=job)
    publisher = connect()  # as the bridge, like the push channel
    command = json.dumps(
        {"delivery_id": delivery.pk, "job_id": job.pk, "action": "update_config", "payload": {}}
    )

    def answered():
        # The first push may precede the terminal's subscription; a repeat is harmless.
        publisher.publish(commands_of(device), command, qos=1)
        time.sleep(0.3)
        return Job.objects.get(pk=job.pk).status == JobStatus.COMPLETED

    try:
        wait_for(answered)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
        for thread in threads:
            thread.join(timeout=15)
    assert json.loads(out.getvalue().strip().splitlines()[-1])["completed"] >= 1


@pytest.mark.django_db
def test_the_api_answers_503_when_a_rotation_cannot_reach_the_broker(broker, settings, admin_api, admin_user):
    device, _ = device_with_login(admin_user)
    settings.HOMEPOT_JOBS_MQTT_PORT = free_port()

    response = admin_api.post(f"/devices/{device.device_id}/credential")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "broker_unavailable"


@pytest.mark.django_db
def test_readyz_logs_in_to_the_broker_as_the_bridge(broker, settings, client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json()["checks"]["mqtt"] == "ok"
    # A wrong bridge password: the broker answers, but would not let our work through.
    settings.HOMEPOT_MQTT_BRIDGE_PASSWORD = "not-the-password"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "redis": "ok", "mqtt": "refused"},
    }
