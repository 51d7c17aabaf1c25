"""Writes of the monitoring app: the audit trail.

Durability. Every audited write takes the chain lock (one writer at a time) and holds it to
its COMMIT. The lock's statement also makes that COMMIT asynchronous, local to the
transaction (`_chain_lock_sql`): PostgreSQL releases the lock once the commit record is in
the WAL buffers, not after the fsync, so the next writer's turn does not wait for this one's
disk. The connection's commit() (homepot/db/postgresql/base.py) then waits, outside the lock,
until the WAL is flushed past that commit record, before it returns: before the request is
answered and before any on_commit hook (the dispatcher's enqueue, MQTT publishes) runs. What
a caller was told is saved is on disk, as before. When the append is the last statement of
the outermost atomic block (audited_atomic's append, the block not nested), its query also
carries the COMMIT and the flush: the lock is then held for no round trip to this process.

Why the chain stays whole after a crash: WAL is one sequence, and recovery replays a prefix
of it. Row n+1 is appended only once row n's writer has released the lock, i.e. after row n's
commit record is in the WAL, so row n+1's commit record comes later in it. A crash can lose
only the commit records after the last flush: a suffix of the chain, never a row in the
middle; and none of those rows was acknowledged, since their commit() had not returned.
`verify_audit` finds the chain intact (a suffix cut from the newest end is what signed
checkpoints exist for, and no acknowledged row can be in it).
"""

import contextlib
import datetime
import decimal
import ipaddress
import uuid
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from homepot import request_context
from homepot.compiled_sql import compiled, insert_one
from homepot.errors import NotFound
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog, audit_hashed_text


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

    Call inside the same transaction as the change it records, so both land or neither:
    in a service decorated with audited_atomic, the row is inserted when the service's
    block ends (after its row locks; see "Lock order" below), elsewhere at once. The
    returned entry has its id and hashes from then on. Not idempotent: each call appends
    a row.
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
    # Linked by id, not by instance: the row is inserted at the end of the audited block,
    # when a deleted device or site no longer has a pk on its instance.
    entry = AuditLog(
        event_type=AuditEvent(event_type),
        actor_id=actor.pk if actor is not None else None,
        actor_ref=actor_ref,
        site_id=site.pk if site else None,
        site_ref=site.site_id if site else "",
        device_id=device.pk if device else None,
        device_ref=device.device_id if device else "",
        job_id=job.pk if job else None,
        description=description,
        old_values=old_values,
        new_values=new_values,
        source_ip=_canonical_ip(context.source_ip),
        user_agent=context.user_agent,
        request_id=context.request_id,
    )
    # Queued, not inserted: the chain lock is taken once the caller's audited block is done
    # with its row locks (see audited_atomic). Outside one, this call is its own block.
    # Inside one, appending to its queue needs no savepoint of its own (two statements per
    # row saved: 2,000 alerts opened at once are 2,000 audit rows).
    state = _chain_state()
    if state.depth:
        state.pending.append(entry)
        return entry
    with audited_atomic():
        _chain_state().pending.append(entry)
    return entry


GENESIS_HASH = "0" * 64
# Any fixed 64-bit number: the key of the advisory lock that serialises audit writers.
_CHAIN_LOCK_KEY = 0x484F4D45504F54  # "HOMEPOT"


def append_to_chain(entry: AuditLog) -> AuditLog:
    """Link `entry` to the newest row and insert it now, one writer at a time. Call inside a
    transaction; the chain lock is held until that transaction ends. Services use
    audit_record, which calls this at the end of their audited block."""
    _append_all([entry])
    return entry


def append_batch_to_chain(entries: list[AuditLog]) -> list[AuditLog]:
    """Link `entries` to the newest row, in list order, and insert them in one INSERT under
    the chain lock (held until the caller's transaction ends). For bulk writers such as the
    import of an older audit trail; their `created_at` is now, like every chain row. Not
    idempotent: each call appends."""
    _append_all(entries)
    return entries


def _append_all(entries: list[AuditLog], *, last_in_transaction: bool = False) -> None:
    # On PostgreSQL a transaction-scoped advisory lock orders concurrent writers, so every
    # row's `prev_hash` is the hash of the row committed just before it. SQLite serialises
    # writers by itself. `last_in_transaction`: nothing else runs in the transaction before
    # its atomic block ends (audited_atomic's append), so the one-row append may commit it.
    connection = transaction.get_connection()
    if (
        connection.vendor == "postgresql"
        and len(entries) == 1
        and _append_in_one_trip(connection, entries[0], last_in_transaction=last_in_transaction)
    ):
        return
    if connection.vendor == "postgresql":
        prev_hash = _lock_chain_and_read_head(connection)
    else:
        prev_hash = AuditLog.objects.order_by("-id").values_list("row_hash", flat=True).first()
    prev_hash = prev_hash or GENESIS_HASH
    now = timezone.now()
    for entry in entries:
        entry.created_at = now
        entry.prev_hash = prev_hash
        entry.row_hash = prev_hash = entry.compute_hash()
    # One INSERT for the block's rows: ids are taken in list order, which is chain order.
    if len(entries) == 1:
        insert_one(entries[0], send_signals=False)  # bulk_create of one, compiled once
    else:
        AuditLog.objects.bulk_create(entries)


def _chain_head_sql() -> str:
    table = AuditLog._meta.db_table
    return f'SELECT "row_hash" FROM "{table}" ORDER BY "id" DESC LIMIT 1'  # noqa: S608 (model's own table name)


def _chain_lock_sql(connection) -> str:
    """The statement that takes the chain lock. Where the connection can (homepot.db.postgresql,
    inside a transaction), it also makes the transaction's COMMIT release the lock before the
    WAL flush, and the connection's commit() waits for the flush once the lock is free (see
    "Durability" in the module's docstring)."""
    lock = f"pg_advisory_xact_lock({_CHAIN_LOCK_KEY:d})"
    flush_outside = getattr(connection, "commit_flush_outside_locks", None)
    async_commit = flush_outside() if flush_outside is not None else None
    return f"SELECT {lock}, {async_commit}" if async_commit else f"SELECT {lock}"


def _lock_chain_and_read_head(connection) -> str | None:
    """Take the chain lock, then read the newest row's hash: two statements in one round
    trip (a simple-protocol query, hence no parameters). Correct only because PostgreSQL
    gives each statement of such a query its own snapshot under READ COMMITTED, so the
    SELECT sees the row the previous lock holder committed while this one waited."""
    with connection.cursor() as cursor:
        cursor.execute(f"{_chain_lock_sql(connection)}; {_chain_head_sql()}")
        cursor.nextset()
        row = cursor.fetchone()
    return row[0] if row else None


class _OneTripAppend:
    """The chain lock, the head's hash, the row's hash and its INSERT in one round trip, for
    a block that appends one row (every audited service but the bulk writers).

    The row's canonical text (audit_hashed_text) is built in Python with a stand-in for the
    previous hash; PostgreSQL puts the head's hash in its place and takes its SHA-256, so
    the row is the one _append_all writes in three round trips (lock and head, INSERT, both
    under the lock): the hash verify_audit recomputes in Python. The lock is held one round
    trip and one Python hash less, which is what concurrent writers queue on. `created_at`
    is taken just before the trip, so under contention a row can carry a time up to its
    lock wait earlier than the row before it; the chain's order is the ids', drawn under
    the lock as before.
    """

    def __init__(self, connection, lock_sql: str):
        meta = AuditLog._meta
        chained = {"created_at", "prev_hash", "row_hash"}
        self.fields = [
            f for f in meta.local_concrete_fields if f is not meta.auto_field and f.name not in chained
        ]
        quote = connection.ops.quote_name
        table = quote(meta.db_table)
        columns = ", ".join(quote(f.column) for f in self.fields)
        chain_columns = ", ".join(quote(name) for name in ("created_at", "prev_hash", "row_hash"))
        placeholders = ", ".join(["%s"] * len(self.fields))
        # Model metadata, quoted; every value is a parameter.
        self.sql = (
            f"{lock_sql}; "  # noqa: S608
            f"INSERT INTO {table} ({columns}, {chain_columns}) "
            f"SELECT {placeholders}, %s, head.prev, "
            "encode(sha256(convert_to(%s || head.prev || %s, 'UTF8')), 'hex') "
            f"FROM (SELECT coalesce(({_chain_head_sql()}), %s) AS prev) AS head "
            f"RETURNING {quote('id')}, {quote('prev_hash')}, {quote('row_hash')}"
        )


def _commit_with_append(connection) -> str | None:
    """SQL that commits the transaction after the append, in its round trip; None where the
    connection cannot (another backend, a nested block: commit() commits later)."""
    commit_with = getattr(connection, "commit_with_last_statement", None)
    return commit_with() if commit_with is not None else None


# Not a hash, so it cannot be a row's previous hash; a row whose own text contains it takes
# the three-trip path.
_PREV_STAND_IN = f"prev-{uuid.uuid4().hex}"


def _append_in_one_trip(connection, entry: AuditLog, *, last_in_transaction: bool = False) -> bool:
    """Appends `entry` in one round trip (see _OneTripAppend); False, having done nothing,
    when its text cannot be split around the stand-in. With `last_in_transaction`, where the
    connection allows it (homepot.db.postgresql: the outermost atomic block, about to
    commit), the same round trip also commits the transaction and waits for its WAL flush:
    the chain lock is then held for no round trip to this process at all."""
    lock_sql = _chain_lock_sql(connection)
    plan = compiled(
        ("monitoring.audit_append_one", lock_sql), connection.alias, lambda c: _OneTripAppend(c, lock_sql)
    )
    entry.created_at = timezone.now()
    text = audit_hashed_text(
        entry, created_at=entry.created_at.astimezone(datetime.UTC).isoformat(), prev_hash=_PREV_STAND_IN
    )
    before, stand_in, after = text.partition(_PREV_STAND_IN)
    if not stand_in or _PREV_STAND_IN in after:
        return False
    values = [f.get_db_prep_save(f.pre_save(entry, True), connection) for f in plan.fields]
    commit = _commit_with_append(connection) if last_in_transaction else None
    sql = f"{plan.sql}; {commit}" if commit else plan.sql
    with transaction.mark_for_rollback_on_error(connection.alias), connection.cursor() as cursor:
        cursor.execute(sql, [*values, entry.created_at, before, after, GENESIS_HASH])
        cursor.nextset()
        entry.pk, entry.prev_hash, entry.row_hash = cursor.fetchone()
    if commit:
        connection.statement_committed()
    entry._state.adding = False
    entry._state.db = connection.alias
    return True


# --- Lock order ----------------------------------------------------------------------------
#
# ONE rule for every audited write (docs/architecture.md, "Lock order"):
#   1. row locks first: the rows being changed, locked with lock_for_change(), parent before
#      child (site → device → credential, site → job → delivery, site → membership);
#   2. the audit chain lock last, just before the audit INSERT, in the same transaction.
# audited_atomic enforces step 2: audit_record only queues its row; the outermost audited
# block appends the queue to the chain when its body is done, after every row lock the body
# took. Two writers can then only wait on each other's row locks in one order, and the
# chain lock is held from the audit INSERT to the COMMIT, not for the whole transaction.


class _ChainState:
    __slots__ = ("depth", "pending")

    def __init__(self):
        self.depth = 0
        self.pending: list[AuditLog] = []


def _chain_state() -> _ChainState:
    # Per connection, hence per thread: Django gives each thread its own connection.
    connection = transaction.get_connection()
    state = getattr(connection, "_homepot_audit_chain", None)
    if state is None:
        state = connection._homepot_audit_chain = _ChainState()
    return state


@contextlib.contextmanager
def audited_atomic():
    """transaction.atomic for a write that records audit rows: decorate a service with it
    (or use it as a `with` block). The audit rows its body records are appended to the
    chain when the outermost audited block ends, after the body's own row locks.

    Nested blocks join the outermost one. A block that raises drops the audit rows it
    queued along with its savepoint. Not a place to swallow errors of a nested plain
    `transaction.atomic` that recorded audit rows: those rows stay queued.
    """
    with transaction.atomic():
        state = _chain_state()
        mark = len(state.pending)
        state.depth += 1
        try:
            yield
        except BaseException:
            del state.pending[mark:]
            raise
        finally:
            state.depth -= 1
        if state.depth == 0 and state.pending:
            entries, state.pending = state.pending, []
            # The last thing before this block ends: if it is the outermost one, its commit
            # can go with the append (see _append_in_one_trip).
            _append_all(entries, last_in_transaction=True)


def lock_for_change(queryset: models.QuerySet | type[models.Model], pk, *, what: str = ""):
    """The row `pk` of `queryset`, locked FOR UPDATE until the transaction ends: step 1 of
    the lock order. Lock parents before children.

    Raises NotFound (a 404) when the row is gone, e.g. deleted by a concurrent request that
    held the lock first: the loser of a race gets a clean answer, not a server error.
    """
    if isinstance(queryset, type):
        queryset = queryset.objects.all()
    try:
        return queryset.select_for_update(of=("self",)).get(pk=pk)
    except queryset.model.DoesNotExist:
        name = what or queryset.model._meta.verbose_name
        raise NotFound(f"The {name} no longer exists; it was removed by another request.") from None


def _canonical_ip(value: str | None) -> str | None:
    # Stored as PostgreSQL inet, which prints addresses in their compressed form; hashing
    # the same form keeps the chain verifiable after a round trip.
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None
