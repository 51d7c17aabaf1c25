"""Writes of the monitoring app: the audit trail."""

import datetime
import decimal
import ipaddress
import uuid
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from homepot import request_context
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (decimal.Decimal, uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    return value


def snapshot(instance: models.Model, fields: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The audited fields of `instance` as JSON-ready values (foreign keys by their id)."""
    data = {}
    for name in fields:
        field = instance._meta.get_field(name)
        data[name] = _jsonable(getattr(instance, field.attname))
    return data


def changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Only the fields whose value differs, as (old values, new values)."""
    changed = [name for name in after if before.get(name) != after[name]]
    return {n: before.get(n) for n in changed}, {n: after[n] for n in changed}


def update_audited(
    instance: models.Model,
    fields: dict[str, Any],
    *,
    audited_fields: tuple[str, ...],
    event_type: AuditEvent | str,
    actor,
    description: str,
    **links,
) -> dict[str, Any]:
    """Set `fields` on `instance`, validate, and save with one audit row naming only what
    changed (`description` is followed by the changed field names). Returns the new values
    of what changed; a repeat with the same values saves and records nothing.

    Call inside the caller's transaction, on a row it has locked.
    """
    before = snapshot(instance, audited_fields)
    for name, value in fields.items():
        setattr(instance, name, value)
    instance.full_clean()
    old, new = changes(before, snapshot(instance, audited_fields))
    if new:
        instance.save()
        audit_record(
            event_type=event_type,
            actor=actor,
            description=f"{description}: {', '.join(new)}",
            old_values=old,
            new_values=new,
            **links,
        )
    return new


def audit_record(
    *,
    event_type: AuditEvent | str,
    actor=None,
    site=None,
    device=None,
    job=None,
    description: str = "",
    old_values: dict | None = None,
    new_values: dict | None = None,
) -> AuditLog:
    """Append one audit row. Source address, user agent and request id come from the
    current request (see homepot.request_context); outside a request they stay empty.

    Call inside the same transaction as the change it records, so both land or neither.
    Not idempotent: each call appends a row.
    """
    context = request_context.current()
    if device is not None and site is None:
        site = device.site
    if job is not None and site is None:
        site = job.site
    # A device acting as itself is named, but only users are linked as actors.
    actor_ref = (
        actor.get_username() if actor is not None and getattr(actor, "is_authenticated", False) else ""
    )
    actor = actor if actor_ref and not getattr(actor, "is_device", False) else None
    entry = AuditLog(
        event_type=AuditEvent(event_type),
        actor=actor,
        actor_ref=actor_ref,
        site=site,
        site_ref=site.site_id if site else "",
        device=device,
        device_ref=device.device_id if device else "",
        job=job,
        description=description,
        old_values=old_values,
        new_values=new_values,
        source_ip=_canonical_ip(context.source_ip),
        user_agent=context.user_agent,
        request_id=context.request_id,
    )
    with transaction.atomic():
        append_to_chain(entry)
    return entry


GENESIS_HASH = "0" * 64
# Any fixed 64-bit number: the key of the advisory lock that serialises audit writers.
_CHAIN_LOCK_KEY = 0x484F4D45504F54  # "HOMEPOT"


def append_to_chain(entry: AuditLog) -> AuditLog:
    """Link `entry` to the newest row and insert it, one writer at a time. Call inside a
    transaction (audit_record does); the lock is held until that transaction ends.

    On PostgreSQL a transaction-scoped advisory lock orders concurrent writers, so every
    row's `prev_hash` is the hash of the row committed just before it. SQLite serialises
    writers by itself.
    """
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    entry.created_at = timezone.now()
    entry.prev_hash = (
        AuditLog.objects.order_by("-id").values_list("row_hash", flat=True).first() or GENESIS_HASH
    )
    entry.row_hash = entry.compute_hash()
    entry.save(force_insert=True)
    return entry


def _canonical_ip(value: str | None) -> str | None:
    # Stored as PostgreSQL inet, which prints addresses in their compressed form; hashing
    # the same form keeps the chain verifiable after a round trip.
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
