"""Writes of the monitoring app: the audit trail."""

import datetime
import decimal
import ipaddress
import uuid
from typing import Any

from django.db import models

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
    actor = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return AuditLog.objects.create(
        event_type=AuditEvent(event_type),
        actor=actor,
        actor_ref=actor.get_username() if actor else "",
        site=site,
        site_ref=site.site_id if site else "",
        device=device,
        device_ref=device.device_id if device else "",
        job=job,
        description=description,
        old_values=old_values,
        new_values=new_values,
        source_ip=context.source_ip,
        user_agent=context.user_agent,
        request_id=context.request_id,
    )
