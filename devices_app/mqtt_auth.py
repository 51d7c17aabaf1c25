"""Device logins on the MQTT broker, kept in step with device credentials.

With HOMEPOT_MQTT_AUTH on, the broker (Mosquitto 2 with its dynamic security plugin) lets a
device in only as itself: username = its device_id, password = its device credential (the
same secret as `Authorization: Device <credential>` over HTTP), client id = its device_id.
Each device has a role of its own, `homepot-device-<device_id>`, allowed to publish on
`homepot/devices/<device_id>/events` and to subscribe to `homepot/devices/<device_id>/commands`
and nothing else. Mosquitto 2.0's dynamic security ACLs take no `%u`/`%c` patterns (tried on
2.0.11: such an ACL matches no topic), hence one role per device instead of one shared role.
The bridge and the push channel log in as HOMEPOT_MQTT_BRIDGE_USERNAME (role
`homepot-bridge`: every device's events and commands). Anonymous clients are refused by the
broker's configuration (deploy/mosquitto/mosquitto.conf).

The database keeps only a hash of a credential, so the broker learns the secret when it is
issued: `device_login_set` runs inside the issuing transaction, before it commits, holding
the device's row lock, so concurrent rotations reach the broker in the order they commit,
and an unreachable broker refuses the rotation (BrokerUnavailable, 503) instead of leaving
the old secret working on MQTT. Revocation and deletion never wait for the broker: after
commit `device_login_remove_later` removes the login at once, or, if the broker is away,
leaves it to a retrying task. Replacing or removing a login also drops the device's open
session (Mosquitto disconnects it with reason 0x98, administrative action).

`manage.py mqtt_sync_auth` reconciles a broker with the database: roles, the bridge login,
and removal of logins of devices without a usable credential. A broker rebuilt from scratch
gets its device logins back as each device's credential is rotated (the secrets are not kept).

With HOMEPOT_MQTT_AUTH off (the default, for an anonymous development broker) every function
here does nothing.
"""

import json
import logging
import threading
import uuid

from django.conf import settings
from django.db import transaction

from homepot.errors import ServiceError

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "homepot-device-"
BRIDGE_ROLE = "homepot-bridge"
# Most commands sent to the plugin in one message (a broker-wide sync sends many).
COMMANDS_PER_MESSAGE = 500

# The plugin's answers that mean "already as wanted" for an idempotent step.
NOT_FOUND = ("Client not found", "Role not found")
ALREADY_EXISTS = ("Client already exists", "Role already exists", "ACL with this topic already exists")


class BrokerUnavailable(ServiceError):
    """The broker could not be told about a device login (unreachable, refused, no answer)."""

    status_code = 503
    code = "broker_unavailable"


def enabled() -> bool:
    return bool(getattr(settings, "HOMEPOT_MQTT_AUTH", False))


def device_role(device_id: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_acls(device_id: str) -> list[dict]:
    """What a device may do: send its events, receive its commands."""
    base = f"homepot/devices/{device_id}"
    return [
        {"acltype": "publishClientSend", "topic": f"{base}/events", "allow": True},
        {"acltype": "subscribePattern", "topic": f"{base}/commands", "allow": True},
        {"acltype": "unsubscribePattern", "topic": f"{base}/commands", "allow": True},
        {"acltype": "publishClientReceive", "topic": f"{base}/commands", "allow": True},
    ]


def bridge_acls() -> list[dict]:
    """The bridge and the push channel: every device's events in (also through a shared
    subscription), every device's commands out."""
    events, commands = "homepot/devices/+/events", "homepot/devices/+/commands"
    return [
        {"acltype": "publishClientSend", "topic": commands, "allow": True},
        {"acltype": "subscribePattern", "topic": events, "allow": True},
        {"acltype": "subscribePattern", "topic": f"$share/+/{events}", "allow": True},
        {"acltype": "unsubscribePattern", "topic": events, "allow": True},
        {"acltype": "unsubscribePattern", "topic": f"$share/+/{events}", "allow": True},
        {"acltype": "publishClientReceive", "topic": events, "allow": True},
    ]


def _device_login_commands(device_id: str, password: str) -> list[dict]:
    role = device_role(device_id)
    return [
        # Deleting first drops a session still open with the old secret.
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": role},
        {"command": "createRole", "rolename": role, "acls": device_acls(device_id)},
        {
            "command": "createClient",
            "username": device_id,
            "password": password,
            # One client id per device: a device cannot take over another's session.
            "clientid": device_id,
            "roles": [{"rolename": role}],
        },
    ]


def device_removal_commands(device_id: str) -> list[dict]:
    return [
        {"command": "deleteClient", "username": device_id},
        {"command": "deleteRole", "rolename": device_role(device_id)},
    ]


def device_login_set(*, device_id: str, password: str) -> None:
    """Make `password` the device's only broker login, dropping any open session of it.

    Call inside the transaction that issues the credential, with the device row locked
    (device_credential_issue, device_create). Raises BrokerUnavailable if the broker does
    not confirm. A repeat is safe. No-op with HOMEPOT_MQTT_AUTH off.
    """
    if enabled():
        broker_commands(_device_login_commands(device_id, password), ok_errors=NOT_FOUND)


def device_login_remove_later(*, device_id: str) -> None:
    """After the current transaction commits, remove the device's broker login if it has no
    usable credential by then (revoked, or the device deleted). Tried at once; if the broker
    is away, left to the retrying task `devices_app.tasks.device_mqtt_login_remove`. No-op
    with HOMEPOT_MQTT_AUTH off."""
    if not enabled():
        return

    def remove():
        try:
            device_login_remove_if_unused(device_id=device_id)
        except BrokerUnavailable as exc:
            from devices_app.tasks import device_mqtt_login_remove

            logger.error("MQTT login of %s not removed yet (%s); retrying in a task", device_id, exc)
            try:
                device_mqtt_login_remove.delay(device_id)
            except Exception:  # noqa: BLE001 - the Celery broker is away too
                # The revocation has committed: say what is left to do rather than answer an
                # error for it. `mqtt_sync_auth` removes every login without a usable credential.
                logger.exception(
                    "MQTT login of %s not removed and the retry not queued: run manage.py mqtt_sync_auth",
                    device_id,
                )

    transaction.on_commit(remove)


def device_login_remove_if_unused(*, device_id: str) -> bool:
    """Remove the device's broker login unless it has a usable credential again (a newer
    one, issued meanwhile). The device row lock orders this with credential issues. Returns
    whether it removed. Raises BrokerUnavailable. A repeat is safe."""
    from devices_app.models import Device, DeviceCredential

    if not enabled():
        return False
    with transaction.atomic():
        list(Device.objects.select_for_update().filter(device_id=device_id).values_list("pk"))
        if DeviceCredential.objects.filter(device__device_id=device_id, revoked_at__isnull=True).exists():
            return False
        broker_commands(device_removal_commands(device_id), ok_errors=NOT_FOUND)
    return True


def broker_commands(commands: list[dict], *, ok_errors=()) -> list[dict]:
    """Send dynamic security commands as the broker admin and return the plugin's responses
    (in order). A response whose error is not in `ok_errors` raises BrokerUnavailable, as do
    an unreachable broker, a refused login and a missing answer."""
    responses = []
    for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
        responses += _send(commands[start : start + COMMANDS_PER_MESSAGE])
    failed = [r for r in responses if r.get("error") and r["error"] not in ok_errors]
    if failed:
        raise BrokerUnavailable(
            "The MQTT broker refused: " + "; ".join(f"{r.get('command')}: {r['error']}" for r in failed[:5])
        )
    return responses


def _send(commands: list[dict]) -> list[dict]:
    import paho.mqtt.client as mqtt

    # Every admin sees every answer on the response topic: ours carry our tag.
    tag = uuid.uuid4().hex
    commands = [{**command, "correlationData": f"{tag}-{i}"} for i, command in enumerate(commands)]
    answered: dict[str, dict] = {}
    connected, subscribed, done = threading.Event(), threading.Event(), threading.Event()
    refused: list[str] = []

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            refused.append(str(reason_code))
        else:
            client.subscribe(RESPONSE_TOPIC, qos=1)
        connected.set()

    def on_message(client, userdata, message):
        try:
            responses = json.loads(message.payload).get("responses", [])
        except (ValueError, AttributeError):
            return
        for response in responses:
            correlation = response.get("correlationData", "")
            if isinstance(correlation, str) and correlation.startswith(tag):
                answered[correlation] = response
        if len(answered) == len(commands):
            done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(settings.HOMEPOT_MQTT_ADMIN_USERNAME, settings.HOMEPOT_MQTT_ADMIN_PASSWORD)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    timeout = getattr(settings, "HOMEPOT_MQTT_ADMIN_TIMEOUT_SECONDS", 10)
    try:
        client.connect(settings.HOMEPOT_JOBS_MQTT_HOST, settings.HOMEPOT_JOBS_MQTT_PORT, keepalive=30)
    except OSError as exc:
        raise BrokerUnavailable(f"MQTT broker unreachable: {exc}") from exc
    client.loop_start()
    try:
        if not connected.wait(timeout) or refused:
            raise BrokerUnavailable(f"The MQTT broker refused the admin login: {refused or 'no answer'}")
        if not subscribed.wait(timeout):
            raise BrokerUnavailable("The MQTT broker did not confirm the admin's subscription.")
        client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        if not done.wait(timeout):
            raise BrokerUnavailable("The MQTT broker's dynamic security plugin did not answer in time.")
    finally:
        client.disconnect()
        client.loop_stop()
    return [answered[command["correlationData"]] for command in commands]
