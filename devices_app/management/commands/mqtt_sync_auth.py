"""Reconcile the MQTT broker's logins (Mosquitto dynamic security) with the database.

    python manage.py mqtt_sync_auth [--reset-bridge-password] [--dry-run]

- the `homepot-bridge` role (every device's events in, commands out) and the bridge's login
  HOMEPOT_MQTT_BRIDGE_USERNAME with it (its password is set when the login is created, or
  again with --reset-bridge-password, which drops the bridges' sessions: they reconnect);
- the logins of devices without a usable credential (revoked, device deleted, a rotation
  rolled back) are removed, with their roles and any open session;
- devices with a usable credential but no login are counted and named: the broker cannot
  be given their secret (only its hash is kept), so rotate their credentials (admin action
  "Issue new credentials" or POST /api/v1/devices/<id>/credential) to bring them back.

Safe to run again and at any time (e.g. after restoring or rebuilding the broker). Needs
HOMEPOT_MQTT_AUTH on.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from devices_app import mqtt_auth
from devices_app.models import Device, DeviceCredential
from homepot.db import stream

REMOVE_AT_ONCE = 500


class Command(BaseCommand):
    help = "Reconcile the MQTT broker's logins (bridge, devices) with the device credentials."

    def add_arguments(self, parser):
        parser.add_argument(
            "--reset-bridge-password",
            action="store_true",
            help="Set the bridge login's password to HOMEPOT_MQTT_BRIDGE_PASSWORD even if it exists.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Report only; change nothing.")

    def handle(self, *args, reset_bridge_password, dry_run, **options):
        if not mqtt_auth.enabled():
            raise CommandError("HOMEPOT_MQTT_AUTH is off: the broker has no logins to sync.")
        try:
            self._sync(reset_bridge_password=reset_bridge_password, dry_run=dry_run)
        except mqtt_auth.BrokerUnavailable as exc:
            raise CommandError(str(exc)) from exc

    def _sync(self, *, reset_bridge_password: bool, dry_run: bool) -> None:
        listed = mqtt_auth.broker_commands(
            [{"command": "listClients", "count": -1}, {"command": "listRoles", "count": -1}]
        )
        clients = {_name(c, "username") for c in listed[0]["data"]["clients"]}
        roles = {_name(r, "rolename") for r in listed[1]["data"]["roles"]}
        if not dry_run:
            self._sync_bridge(clients, reset_bridge_password)

        prefix = mqtt_auth.DEVICE_ROLE_PREFIX
        on_broker = sorted({r[len(prefix) :] for r in roles if r.startswith(prefix)})
        removed = 0
        for start in range(0, len(on_broker), REMOVE_AT_ONCE):
            removed += self._remove_unused(on_broker[start : start + REMOVE_AT_ONCE], dry_run)
        verb = "Would remove" if dry_run else "Removed"
        self.stdout.write(f"{verb} {removed} device login(s) without a usable credential.")

        missing = [
            device_id
            for device_id in stream(
                DeviceCredential.objects.filter(revoked_at__isnull=True)
                .values_list("device__device_id", flat=True)
                .order_by("device__device_id"),
                chunk_size=2000,
            )
            if device_id not in clients
        ]
        if missing:
            shown = ", ".join(missing[:20]) + (" …" if len(missing) > 20 else "")
            self.stdout.write(
                f"{len(missing)} device(s) have a usable credential but no broker login: rotate "
                f"their credentials to give them one ({shown})."
            )

    def _sync_bridge(self, clients: set[str], reset_password: bool) -> None:
        username = settings.HOMEPOT_MQTT_BRIDGE_USERNAME
        role = mqtt_auth.BRIDGE_ROLE
        commands = [{"command": "createRole", "rolename": role, "acls": mqtt_auth.bridge_acls()}]
        commands += [{"command": "addRoleACL", "rolename": role, **acl} for acl in mqtt_auth.bridge_acls()]
        if username not in clients:
            commands.append(
                {
                    "command": "createClient",
                    "username": username,
                    "password": settings.HOMEPOT_MQTT_BRIDGE_PASSWORD,
                    "roles": [{"rolename": role}],
                }
            )
        elif reset_password:
            commands.append(
                {
                    "command": "setClientPassword",
                    "username": username,
                    "password": settings.HOMEPOT_MQTT_BRIDGE_PASSWORD,
                }
            )
        commands.append({"command": "getClient", "username": username})
        responses = mqtt_auth.broker_commands(commands, ok_errors=mqtt_auth.ALREADY_EXISTS)
        has = {r["rolename"] for r in responses[-1]["data"]["client"].get("roles", [])}
        if role not in has:
            mqtt_auth.broker_commands([{"command": "addClientRole", "username": username, "rolename": role}])
        self.stdout.write(f"Bridge login {username} with role {role}: ready.")

    def _remove_unused(self, device_ids: list[str], dry_run: bool) -> int:
        """Remove the logins of these devices that have no usable credential, holding their
        rows locked so that a credential issued meanwhile waits for us (and then sets its
        login again)."""
        with transaction.atomic():
            # In id order, as every writer that locks many device rows (docs/architecture.md).
            locking = Device.objects.select_for_update().filter(device_id__in=device_ids).order_by("pk")
            list(locking.values_list("pk"))
            usable = set(
                DeviceCredential.objects.filter(
                    device__device_id__in=device_ids, revoked_at__isnull=True
                ).values_list("device__device_id", flat=True)
            )
            unused = [device_id for device_id in device_ids if device_id not in usable]
            if unused and not dry_run:
                commands = [c for device_id in unused for c in mqtt_auth.device_removal_commands(device_id)]
                mqtt_auth.broker_commands(commands, ok_errors=mqtt_auth.NOT_FOUND)
        for device_id in unused:
            self.stdout.write(f"  {device_id}", ending="\n")
        return len(unused)


def _name(entry, key: str) -> str:
    # listClients/listRoles answer names, or objects with `verbose`.
    return entry[key] if isinstance(entry, dict) else entry
