"""Writes of the devices app. Every change is validated, scoped and audited in one transaction."""

import dataclasses
import datetime
import functools
import logging
import secrets

import redis
from django.conf import settings
from django.db import connection, models, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from accounts.scoping import require_site_access
from devices_app import credential_cache, identity_store, mqtt_auth
from devices_app.models import Device, DeviceCredential
from monitoring_app import partitions
from monitoring_app.choices import AuditEvent, ConnectivityReason
from monitoring_app.models import DeviceStatusChange
from monitoring_app.services import audit_record, audited_atomic, lock_for_change, snapshot, update_audited
from monitoring_app.sweep import offline_after
from sites_app.models import Site

logger = logging.getLogger(__name__)

AUDITED_FIELDS = (
    "device_id",
    "name",
    "device_type",
    "site",
    "status",
    "ip_address",
    "mac_address",
    "firmware_version",
    "config",
    "push_channel",
)


@audited_atomic()
def device_create(*, actor, site: Site, device_id: str, name: str, **fields) -> Device:
    """Register a device at `site` (the actor must be allowed to change that site) and
    issue its credential (and its broker login, as device_credential_issue does).

    The credential's secret is returned once, on the instance, as `device.issued_secret`.
    Audited as device.created. Raises ValidationError for bad or duplicate values.
    """
    require_site_access(actor, site, "change")
    device = Device(site=site, device_id=device_id, name=name, **fields)
    device.full_clean()
    device.save()
    credential, device.issued_secret = _new_credential(actor=actor, device=device)
    # Before the audit row: the broker call must not hold the audit chain's lock.
    mqtt_auth.device_login_set(device_id=device.device_id, password=device.issued_secret)
    audit_record(
        event_type=AuditEvent.DEVICE_CREATED,
        actor=actor,
        device=device,
        description=f"Device {device.device_id} registered at {site.site_id} "
        f"with credential {credential.key_prefix}…",
        new_values=snapshot(device, AUDITED_FIELDS),
    )
    return device


@audited_atomic()
def device_update(*, actor, device: Device, **fields) -> Device:
    """Change the given fields; moving to another site needs change rights on both sites.

    Audited as device.updated with only what changed; a repeat records nothing.
    """
    # The stored row decides the current site, not a caller's possibly edited instance.
    device = lock_for_change(Device.objects.select_related("site"), device.pk)
    require_site_access(actor, device.site, "change")
    new_site = fields.get("site")
    if new_site is not None and new_site.pk != device.site_id:
        require_site_access(actor, new_site, "change")
    old_status = device.status
    # Status, site, type and id are what a heartbeat reads from Redis (devices_app.identity_store).
    identity_store.forget_devices_on_commit([device.pk])
    update_audited(
        device,
        fields,
        audited_fields=AUDITED_FIELDS,
        event_type=AuditEvent.DEVICE_UPDATED,
        actor=actor,
        description=f"Device {device.device_id} updated",
        device=device,
    )
    if device.status != old_status:
        _status_set_by_operator(device, old_status)
    return device


def _status_set_by_operator(device: Device, old_status: str) -> None:
    # Stamped like the sweep's and the ingest's transitions: the alert thresholds (a device
    # in error for longer than ALERT_ERROR_SECONDS) measure from it, and the timeline shows it.
    now = timezone.now()
    Device.objects.filter(pk=device.pk).update(connectivity_changed_at=now)
    device.connectivity_changed_at = now
    partitions.history_write(
        lambda: DeviceStatusChange.objects.create(
            device=device,
            old_status=old_status,
            new_status=device.status,
            reason=ConnectivityReason.OPERATOR,
            changed_at=now,
        )
    )


@audited_atomic()
def device_delete(*, actor, device: Device) -> None:
    """Delete a device and its health history; audited as device.deleted (history kept).
    Its broker login goes after commit, as on revocation. NotFound if a concurrent request
    deleted it first."""
    # The device row before its children (credentials, checks, deliveries), which the
    # delete reaches only after it: the parent → child order every writer of a device keeps.
    device = lock_for_change(Device.objects.select_related("site"), device.pk)
    require_site_access(actor, device.site, "change")
    mqtt_auth.device_login_remove_later(device_id=device.device_id)
    identity_store.forget_credentials_on_commit(
        DeviceCredential.objects.filter(device=device).values_list("key_hash", flat=True)
    )
    identity_store.forget_devices_on_commit([device.pk])
    audit_record(
        event_type=AuditEvent.DEVICE_DELETED,
        actor=actor,
        device=device,
        description=f"Device {device.device_id} deleted from {device.site.site_id}",
        old_values=snapshot(device, AUDITED_FIELDS),
    )
    device.delete()


CREDENTIAL_PREFIX = "hpd_"  # noqa: S105 (a public marker, not a secret)
CREDENTIAL_USE_RESOLUTION = datetime.timedelta(minutes=15)


@audited_atomic()
def device_credential_issue(*, actor, device: Device) -> tuple[DeviceCredential, str]:
    """Issue a new credential for `device`, revoking any it had, and return it with its
    secret (shown only now). Audited as device.credential_issued. Each call rotates.

    With HOMEPOT_MQTT_AUTH on, the broker login is replaced before commit (the old secret
    and any session of it stop working on MQTT); BrokerUnavailable (503) if it cannot be.
    NotFound if the device was deleted meanwhile."""
    # The device row first (parent → child): one rotation at a time, and no credential for
    # a device being deleted.
    device = lock_for_change(Device.objects.select_related("site"), device.pk)
    require_site_access(actor, device.site, "change")
    revoked = _revoke_active(device)
    credential, raw_key = _new_credential(actor=actor, device=device)
    # With the row lock held and before the audit chain's lock: rotations reach the broker
    # in commit order, and an unreachable broker refuses the rotation (BrokerUnavailable).
    mqtt_auth.device_login_set(device_id=device.device_id, password=raw_key)
    audit_record(
        event_type=AuditEvent.DEVICE_CREDENTIAL_ISSUED,
        actor=actor,
        device=device,
        description=f"Credential {credential.key_prefix}… issued to {device.device_id}"
        + (" (the previous one is revoked)" if revoked else ""),
        new_values={"key_prefix": credential.key_prefix},
    )
    return credential, raw_key


@audited_atomic()
def device_credential_revoke(*, actor, device: Device) -> int:
    """Revoke the device's credential, so it can no longer authenticate until a new one is
    issued. Returns how many were revoked (0 on a repeat, which records nothing).

    With HOMEPOT_MQTT_AUTH on, the device's broker login is removed after commit (and its
    open session dropped); a broker that is away does not hold up the revocation, a task
    retries (devices_app.mqtt_auth). NotFound if the device was deleted meanwhile."""
    device = lock_for_change(Device.objects.select_related("site"), device.pk)
    require_site_access(actor, device.site, "change")
    revoked = _revoke_active(device)
    mqtt_auth.device_login_remove_later(device_id=device.device_id)
    if revoked:
        audit_record(
            event_type=AuditEvent.DEVICE_CREDENTIAL_REVOKED,
            actor=actor,
            device=device,
            description=f"Credential of {device.device_id} revoked",
        )
    return revoked


def _new_credential(*, actor, device: Device) -> tuple[DeviceCredential, str]:
    raw_key = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
    credential = DeviceCredential.objects.create(
        device=device,
        key_prefix=raw_key[:12],
        key_hash=DeviceCredential.hash_key(raw_key),
        created_by=actor if getattr(actor, "pk", None) else None,
    )
    return credential, raw_key


def _revoke_active(device: Device) -> int:
    # The device row is locked (callers): the set of active credentials cannot change here.
    active = DeviceCredential.objects.filter(device=device, revoked_at__isnull=True)
    key_hashes = list(active.values_list("key_hash", flat=True))
    revoked = active.update(revoked_at=timezone.now())
    if revoked:
        # Every host refuses the old credential from the commit on (its Redis entry becomes a
        # tombstone), or within HOMEPOT_DEVICES_IDENTITY_SECONDS if Redis cannot be reached
        # then; this process's own memory (used while Redis is away) forgets at once, others'
        # within HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS (devices_app.credential_cache).
        identity_store.forget_credentials_on_commit(key_hashes)
        transaction.on_commit(credential_cache.clear)
    return revoked


@functools.cache
def _credential_lookup_sql() -> tuple[str, tuple, tuple, tuple]:
    """The SQL of `select_related("device__site").filter(key_hash=..., revoked_at=None)`,
    written once per process from the models' fields, and each model's attribute names."""
    models = (DeviceCredential, Device, Site)
    names = tuple(tuple(f.attname for f in model._meta.concrete_fields) for model in models)
    columns = ", ".join(
        f"{alias}.{connection.ops.quote_name(field.column)}"
        for alias, model in zip(("c", "d", "s"), models, strict=True)
        for field in model._meta.concrete_fields
    )
    sql = (
        f"SELECT {columns} FROM {DeviceCredential._meta.db_table} c "  # noqa: S608 (model names only)
        f"JOIN {Device._meta.db_table} d ON d.id = c.device_id "
        f"JOIN {Site._meta.db_table} s ON s.id = d.site_id "
        "WHERE c.key_hash = %s AND c.revoked_at IS NULL LIMIT 1"
    )
    return sql, *names


def _usable_credential(key_hash: str) -> DeviceCredential | None:
    """The unrevoked credential with this hash, its device and the device's site, in ONE
    query. Every agent request starts here, so the SQL is built once, not compiled by the
    ORM per request (that compilation was about half of a heartbeat's time)."""
    sql, credential_names, device_names, site_names = _credential_lookup_sql()
    with connection.cursor() as cursor:
        cursor.execute(sql, [key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    first, second = len(credential_names), len(credential_names) + len(device_names)
    credential = _from_row(DeviceCredential, credential_names, row[:first])
    device = _from_row(Device, device_names, row[first:second])
    device.site = _from_row(Site, site_names, row[second:])
    credential.device = device
    return credential


def _db_datetime(value):
    """A timestamp read by raw SQL, as the ORM would give it: aware, in UTC. PostgreSQL's
    driver already answers that; the embedded SQLite answers naive values (or text), which
    the ORM's compiler converts and a raw cursor does not."""
    if value is None or connection.vendor == "postgresql":
        return value
    if isinstance(value, str):
        value = parse_datetime(value)
    if settings.USE_TZ and timezone.is_naive(value):
        value = timezone.make_aware(value, datetime.UTC)
    return value


def _from_row(model, names, values):
    # What the ORM's compiler would do: each field's own conversion from the database value
    # (JSON fields arrive as text and are decoded here).
    converted = [
        field.from_db_value(value, None, connection)
        if hasattr(field, "from_db_value")
        else _db_datetime(value)
        if isinstance(field, models.DateTimeField)
        else value
        for field, value in zip(model._meta.concrete_fields, values, strict=True)
    ]
    return model.from_db(connection.alias, names, converted)


def device_credential_authenticate(raw_key: str) -> DeviceCredential | None:
    """The usable credential behind `raw_key`, with its device and site, or None.

    One indexed lookup per request; use is recorded at most every 15 minutes.
    """
    if not raw_key.startswith(CREDENTIAL_PREFIX):
        return None
    credential = _usable_credential(DeviceCredential.hash_key(raw_key))
    if credential is None:
        return None
    _record_use(credential.pk, credential.last_used_at)
    return credential


def _record_use(credential_pk: int, last_used_at):
    """Returns the credential's last use as now recorded."""
    # Coarse on purpose: terminals call in every minute, and a write per heartbeat for this
    # bookkeeping would double the ingest's writes.
    now = timezone.now()
    if last_used_at is None or now - last_used_at > CREDENTIAL_USE_RESOLUTION:
        DeviceCredential.objects.filter(pk=credential_pk).update(last_used_at=now)
        return now
    return last_used_at


# The heartbeat's lookup: the same filter as _usable_credential, only the columns a heartbeat
# reads. Planning and reading three whole rows cost PostgreSQL three times as much CPU
# (0.34 against 0.11 ms a lookup, measured), on the one request every terminal makes
# every minute.
_IDENTIFY_SQL = (
    f"SELECT c.id, c.last_used_at, d.id, d.device_id, d.status, d.last_seen, d.site_id, d.device_type "  # noqa: S608
    f"FROM {DeviceCredential._meta.db_table} c JOIN {Device._meta.db_table} d ON d.id = c.device_id "
    "WHERE c.key_hash = %s AND c.revoked_at IS NULL LIMIT 1"
)


def device_identify(raw_key: str) -> Device | None:
    """The device behind a usable credential, carrying only `pk`, `device_id`, `status`,
    `last_seen`, `site_id` and `device_type` (what heartbeats and health reports read), or
    None. Same rule as device_credential_authenticate, use recorded the same way; where more
    of the device is needed, use that."""
    if not raw_key.startswith(CREDENTIAL_PREFIX):
        return None
    with connection.cursor() as cursor:
        cursor.execute(_IDENTIFY_SQL, [DeviceCredential.hash_key(raw_key)])
        row = cursor.fetchone()
    if row is None:
        return None
    credential_pk, last_used_at, device_pk, device_id, status, last_seen, site_id, device_type = row
    last_used_at, last_seen = _db_datetime(last_used_at), _db_datetime(last_seen)
    _record_use(credential_pk, last_used_at)
    return Device(
        pk=device_pk,
        device_id=device_id,
        status=status,
        last_seen=last_seen,
        site_id=site_id,
        device_type=device_type,
    )


class DeviceIdentity:
    """What a heartbeat reads of its device (and of the credential's bookkeeping): a plain
    object, because building a model instance cost more than the rest of the lookup."""

    __slots__ = (
        "credential_pk",
        "device_id",
        "device_type",
        "last_seen",
        "last_used_at",
        "pk",
        "site_id",
        "status",
    )

    def __init__(self, row):
        (
            self.credential_pk,
            self.last_used_at,
            self.pk,
            self.device_id,
            self.status,
            self.last_seen,
            self.site_id,
            self.device_type,
        ) = row


def device_identity(raw_key: str) -> DeviceIdentity | None:
    """The device behind a usable credential, as the agent API's authentication needs it:
    from Redis when stored there (device_identity_from_redis: no PostgreSQL query,
    `last_seen` None), else from PostgreSQL and stored in Redis. Use is recorded as
    device_identify does. None for an unusable credential."""
    identity = device_identity_from_redis(raw_key)
    return identity if identity is not None else device_identity_from_postgres(raw_key)


def device_identity_from_postgres(
    raw_key: str, *, store: bool = True, process_memory: bool = False
) -> DeviceIdentity | None:
    """The device behind a usable credential read from PostgreSQL (the same rule and columns
    as device_identify), use recorded as device_identify does; None for an unusable one.

    With `store`, the identity is stored in Redis for the next request (devices_app
    .identity_store); a caller that writes the device first (the heartbeat) stores it itself
    afterwards. With `process_memory` (the fast heartbeat's alone: heartbeat_record keeps the
    remembered status and last_seen current), while Redis is off or away the identity is
    remembered in this process for HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS
    (devices_app.credential_cache explains the bound)."""
    if not raw_key.startswith(CREDENTIAL_PREFIX):
        return None
    key_hash = DeviceCredential.hash_key(raw_key)
    remember = process_memory and not identity_store.available()
    identity = credential_cache.get(key_hash) if remember else None
    if identity is None:
        since = credential_cache.generation()
        identity = _identity_from_db(key_hash)
        if identity is None:
            return None
        if remember:
            seconds = settings.HOMEPOT_DEVICES_CREDENTIAL_CACHE_SECONDS
            credential_cache.put(key_hash, identity, seconds=seconds, since_generation=since)
    identity.last_used_at = _record_use(identity.credential_pk, identity.last_used_at)
    if store:
        identity_store.fill(key_hash, identity)
    return identity


def _identity_from_db(key_hash: str) -> DeviceIdentity | None:
    with connection.cursor() as cursor:
        cursor.execute(_IDENTIFY_SQL, [key_hash])
        row = cursor.fetchone()
    if row is None:
        return None
    identity = DeviceIdentity(row)
    identity.last_used_at = _db_datetime(identity.last_used_at)
    identity.last_seen = _db_datetime(identity.last_seen)
    return identity


def device_identity_from_redis(
    raw_key: str, *, note_key: str = "", note_value: str = "", stream_entry=None
) -> DeviceIdentity | None:
    """The identity if Redis has it and a heartbeat would leave its status alone (noted as
    asked, in the same script call: identity_store.lookup), else None, without asking
    PostgreSQL. Use is recorded as device_identify does. With `stream_entry`
    (identity_store.StreamEntry, a health report), the same call appends the report, and
    answers only a credential whose use needs no new record: no PostgreSQL write follows."""
    if not raw_key.startswith(CREDENTIAL_PREFIX):
        return None
    key_hash = DeviceCredential.hash_key(raw_key)
    if stream_entry is not None:
        used_since = timezone.now() - CREDENTIAL_USE_RESOLUTION
        return identity_store.lookup(
            key_hash,
            note_key=note_key,
            note_value=note_value,
            stream_entry=stream_entry,
            used_since=used_since,
        )
    identity = identity_store.lookup(key_hash, note_key=note_key, note_value=note_value)
    if identity is not None:
        used_at = identity.last_used_at
        identity.last_used_at = _record_use(identity.credential_pk, used_at)
        if identity.last_used_at is not used_at:
            identity_store.fill(key_hash, identity)  # the new last use, or every hit would write
    return identity


# --- the identities' refresh (beat: devices_app.tasks.refresh_identities) -----------------

# One page of the devices in use (seen within the offline threshold), in pk order after a
# cursor, with their usable credentials and those revoked within the bound: the same columns
# as _IDENTIFY_SQL, one statement (one snapshot), walked by the device pk index.
_IN_USE_SQL = (
    f"WITH page AS (SELECT id, device_id, status, last_seen, site_id, device_type "  # noqa: S608
    f"FROM {Device._meta.db_table} WHERE id > %s AND last_seen >= %s ORDER BY id LIMIT %s) "
    "SELECT c.id, c.last_used_at, p.id, p.device_id, p.status, p.last_seen, p.site_id, p.device_type, "
    "c.key_hash, c.revoked_at IS NOT NULL "
    f"FROM page p LEFT JOIN {DeviceCredential._meta.db_table} c "
    "ON c.device_id = p.id AND (c.revoked_at IS NULL OR c.revoked_at >= %s) ORDER BY p.id"
)


@dataclasses.dataclass
class IdentityRefreshResult:
    """What one refresh did: devices read, entries written, skipped (tombstone, too late),
    revoked credentials tombstoned, pages, and whether Redis failed it (`failed`)."""

    devices: int = 0
    pages: int = 0
    failed: bool = False
    counts: identity_store.RefreshCounts = dataclasses.field(default_factory=identity_store.RefreshCounts)

    def as_dict(self) -> dict:
        return {
            "devices": self.devices,
            "pages": self.pages,
            "failed": self.failed,
            **dataclasses.asdict(self.counts),
        }


def device_identities_in_use_page(*, after_pk: int, batch_size: int, read_at_ms: int):
    """(identity_store.RefreshPage, its last device pk or None at the end, devices read): the
    next `batch_size` devices after `after_pk` seen within the sweep's offline threshold
    (the only ones a heartbeat may be answered for from Redis), read now from PostgreSQL.
    `read_at_ms`: Redis's clock taken before this call, which the entries' expiry counts from."""
    now = timezone.now()
    seen_since = now - offline_after()
    revoked_since = now - datetime.timedelta(seconds=settings.HOMEPOT_DEVICES_IDENTITY_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(_IN_USE_SQL, [after_pk, seen_since, batch_size, revoked_since])
        rows = cursor.fetchall()
    page = identity_store.RefreshPage(read_at_ms=read_at_ms, identities=[], revoked=[])
    device_pks = set()
    for row in rows:
        device_pks.add(row[2])
        key_hash, revoked = row[8], row[9]
        if key_hash is None:
            continue  # a device without a usable credential: nothing to keep warm
        if revoked:
            page.revoked.append(key_hash)
            continue
        identity = DeviceIdentity(row[:8])
        identity.last_used_at = _db_datetime(identity.last_used_at)
        identity.last_seen = _db_datetime(identity.last_seen)
        page.identities.append((key_hash, identity))
    last_pk = rows[-1][2] if len(device_pks) == batch_size else None
    return page, last_pk, len(device_pks)


def device_identities_refresh(*, batch_size: int | None = None) -> IdentityRefreshResult:
    """Rewrite the Redis identity entries (devices_app.identity_store) of every device in use
    from fresh PostgreSQL reads, page by page (keyset on the device pk, `batch_size` devices,
    default HOMEPOT_DEVICES_IDENTITY_REFRESH_BATCH), so a terminal that reports steadily is
    answered from Redis instead of missing every HOMEPOT_DEVICES_IDENTITY_SECONDS. Each entry
    still expires the bound after the PostgreSQL read it carries; tombstones win; sightings
    are not touched (identity_store, "The refresh"). Credentials revoked within the bound get
    their tombstone again. Changes nothing in PostgreSQL; a repeat is safe. Redis failing
    stops the run (logged, `failed`); the next beat starts afresh. Does nothing when the
    identities are off."""
    result = IdentityRefreshResult()
    if not identity_store.enabled():
        return result
    size = batch_size or settings.HOMEPOT_DEVICES_IDENTITY_REFRESH_BATCH
    client = identity_store.refresh_client()
    after_pk = 0
    try:
        identity_store.refresh_prepare(client)
        while after_pk is not None:
            # Redis's clock before the read: the entries' expiry counts from here.
            read_at_ms = identity_store.redis_time_ms(client)
            page, after_pk, devices = device_identities_in_use_page(
                after_pk=after_pk, batch_size=size, read_at_ms=read_at_ms
            )
            result.counts.add(identity_store.refresh_write(client, page))
            result.devices += devices
            result.pages += 1
    except redis.RedisError as exc:
        result.failed = True
        logger.warning(
            "Identity refresh stopped after %d devices, Redis failed; the next beat retries: %s",
            result.devices,
            exc,
        )
    return result
