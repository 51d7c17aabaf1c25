"""A one-row audited block appends its row in one round trip (lock, head, hash and INSERT;
monitoring_app.services._OneTripAppend): the row is the one the three-trip path writes,
with the hash verify_audit recomputes in Python."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from devices_app.tests.factories import DeviceFactory
from monitoring_app import services
from monitoring_app.models import AuditLog
from monitoring_app.services import append_batch_to_chain, audit_record, audited_atomic

pytestmark = pytest.mark.django_db

# Text and JSON that escaping could get wrong between Python's canonical JSON and the
# parameters PostgreSQL concatenates: quotes, backslashes, percent signs, non-ASCII,
# control characters, nesting, numbers and nulls.
AWKWARD = 'Déjà "vu" 100% \\ back\\slash\ttab\nline ✓ 𝄞 %s %(x)s'
AWKWARD_VALUES = {"nested": {"list": [1, 2.5, None, True, AWKWARD]}, "emoji": "🚀", "zero": 0}

CONTENT = ("event_type", "actor_id", "actor_ref", "site_id", "site_ref", "device_id", "device_ref", "job_id")
CONTENT += ("description", "old_values", "new_values", "source_ip", "user_agent", "request_id")


def _record(device, actor, **extra):
    return audit_record(
        event_type="device.updated",
        actor=actor,
        device=device,
        description=AWKWARD,
        old_values=AWKWARD_VALUES,
        new_values={"step": 1, "text": AWKWARD},
        **extra,
    )


def _content(row):
    return {name: getattr(row, name) for name in CONTENT}


def test_a_one_row_block_appends_in_one_statement(admin_user):
    device = DeviceFactory()
    with CaptureQueriesContext(connection) as queries, audited_atomic():
        _record(device, admin_user)
    # The savepoints are the test's own transaction's.
    sql = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(sql) == 1
    assert sql[0].startswith("SELECT pg_advisory_xact_lock(")
    assert "INSERT INTO" in sql[0]


def test_the_row_written_in_one_trip_is_the_row_the_three_trip_path_writes(admin_user):
    device = DeviceFactory()
    with audited_atomic():
        one_trip = _record(device, admin_user)
    # The bulk writers' path: lock and head read, hash in Python, then the INSERT.
    three_trips = AuditLog(**{name: getattr(one_trip, name) for name in CONTENT})
    append_batch_to_chain([three_trips, AuditLog(**{name: getattr(one_trip, name) for name in CONTENT})])
    after = _record(device, admin_user)

    rows = list(AuditLog.objects.order_by("id"))
    assert [r.pk for r in rows] == [one_trip.pk, three_trips.pk, three_trips.pk + 1, after.pk]
    assert _content(rows[0]) == _content(rows[1]) == _content(rows[3])
    assert rows[0].description == AWKWARD and rows[0].old_values == AWKWARD_VALUES
    for row in rows:
        assert row.row_hash == row.compute_hash()
    assert rows[0].prev_hash == "0" * 64
    assert [r.prev_hash for r in rows[1:]] == [r.row_hash for r in rows[:-1]]
    # What the caller holds is what was stored.
    assert (one_trip.pk, one_trip.prev_hash, one_trip.row_hash) == (
        rows[0].pk,
        rows[0].prev_hash,
        rows[0].row_hash,
    )
    assert one_trip.created_at == rows[0].created_at
    call_command("verify_audit")


def test_a_row_whose_text_holds_the_stand_in_takes_the_three_trip_path(admin_user):
    device = DeviceFactory()
    _record(device, admin_user)
    with CaptureQueriesContext(connection) as queries:
        tricky = audit_record(event_type="device.updated", device=device, description=services._PREV_STAND_IN)
    assert len([q for q in queries.captured_queries if q["sql"].startswith("INSERT")]) == 1
    assert not any("INSERT" in q["sql"] and "pg_advisory" in q["sql"] for q in queries.captured_queries)
    tricky.refresh_from_db()
    assert tricky.description == services._PREV_STAND_IN
    assert tricky.row_hash == tricky.compute_hash()
    assert tricky.prev_hash == AuditLog.objects.exclude(pk=tricky.pk).get().row_hash
    call_command("verify_audit")
