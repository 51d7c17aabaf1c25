"""The demo chain trades today, whatever day `manage.py loaddata demo` runs.

fixtures/demo.json is static: its dates lead up to the moment it was built. Its first row is
a `DemoClock` anchor carrying that moment (`built_at`). While `loaddata` runs (our override,
monitoring_app/management/commands/loaddata.py), every raw row saved after the anchor has each
of its dates moved by `shift = now - built_at` before it is written, so health history, last
seen times, jobs, deliveries, chart snapshots and the audit trail all lead up to now, and the
sweep finds the demo's online terminals freshly seen.

Why before the write (pre_save) and not with UPDATEs afterwards: the audit trail is
append-only and hash-chained (created_at is hashed). Shifting its rows before they are written
and chaining them as they go gives a valid chain without ever rewriting an audit row. The cost
is one attribute update per fixture row, no extra query; nothing here runs over the fleet.

A second load into the same database reuses the first load's shift (stored on the anchor):
the rows it rewrites come out identical, which the audit trail accepts. To bring an old demo
to today, start over (`./scripts/run.sh --reset`). Fixtures without the anchor load unchanged.
"""

import contextlib
import contextvars
import dataclasses
import datetime

from django.db import models
from django.utils import timezone

from monitoring_app.models import AuditLog, DemoClock, FleetSnapshot, audit_row_hash
from monitoring_app.rollup import bucket_start


@dataclasses.dataclass
class _Load:
    shift: datetime.timedelta | None = None  # known once the anchor row was read
    audit_prev: str | None = None  # row_hash of the last audit row written by this load


_current: contextvars.ContextVar[_Load | None] = contextvars.ContextVar("demo_clock_load", default=None)


@contextlib.contextmanager
def loading():
    """The span of one `loaddata` call: rows saved within it may be shifted."""
    token = _current.set(_Load())
    try:
        yield
    finally:
        _current.reset(token)


def _anchor(clock: DemoClock) -> datetime.timedelta:
    """Decide the shift (or keep the one a previous load stored) and write it on the anchor."""
    stored = DemoClock.objects.filter(pk=clock.pk).values("loaded_at", "shift").first()
    if stored and stored["shift"] is not None:
        clock.loaded_at, clock.shift = stored["loaded_at"], stored["shift"]
    else:
        clock.loaded_at = timezone.now()
        # Whole seconds: the shifted dates stay readable.
        clock.shift = datetime.timedelta(seconds=int((clock.loaded_at - clock.built_at).total_seconds()))
    return clock.shift


def _chain(entry: AuditLog, load: _Load) -> None:
    """Link a shifted audit row to the one before it, as the app's audit writer would."""
    from monitoring_app.services import GENESIS_HASH

    prev = load.audit_prev
    if prev is None:
        before = AuditLog.objects.filter(pk__lt=entry.pk).order_by("-pk")
        prev = before.values_list("row_hash", flat=True).first() or GENESIS_HASH
    entry.prev_hash = prev
    entry.row_hash = load.audit_prev = audit_row_hash(entry)


def shift_on_load(sender, instance, raw=False, **kwargs) -> None:
    """pre_save receiver: move a fixture row's dates while a demo load is under way."""
    load = _current.get()
    if not raw or load is None:
        return
    if sender is DemoClock:
        load.shift = _anchor(instance)
        return
    if not load.shift:
        return
    for field in instance._meta.concrete_fields:
        if isinstance(field, models.DateTimeField):
            value = getattr(instance, field.attname)
            if value is not None:
                setattr(instance, field.attname, value + load.shift)
    if sender is FleetSnapshot:
        # The charts read snapshots at bucket boundaries (15 minutes, hours): keep them there.
        instance.bucket_at = bucket_start(instance.bucket_at)
    elif sender is AuditLog:
        _chain(instance, load)
