"""homepot.rows: a row read or written from SQL compiled once is the row the ORM reads or
writes, and anything it does not reproduce goes through the ORM."""

import pytest
from django.db import connection
from django.db.models import Value, signals
from django.db.models.functions import Concat
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import UserFactory
from homepot.rows import insert_one
from jobs_app.models import Job
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def _job(site, user, **fields):
    return Job(site=site, action="restart_pos_app", created_by=user, payload={"a": [1, "é"]}, **fields)


def _row(model, pk) -> dict:
    return model.objects.filter(pk=pk).values().get()


def test_a_job_inserted_once_compiled_is_the_row_save_writes():
    site, user = SiteFactory(), UserFactory()
    saved, inserted = _job(site, user, description="x"), _job(site, user, description="x")
    saved.save()
    with CaptureQueriesContext(connection) as queries:
        insert_one(inserted)
    assert len(queries) == 1 and queries.captured_queries[0]["sql"].startswith('INSERT INTO "jobs_app_job"')
    assert inserted.pk and inserted._state.adding is False and inserted._state.db == "default"
    ignore = {"id", "created_at", "updated_at"}
    expected = {k: v for k, v in _row(Job, saved.pk).items() if k not in ignore}
    assert {k: v for k, v in _row(Job, inserted.pk).items() if k not in ignore} == expected
    # The columns with a database default come back, as save() sets them.
    assert (inserted.wave_count, inserted.max_deferrals) == (saved.wave_count, saved.max_deferrals)
    assert inserted.created_at == _row(Job, inserted.pk)["created_at"]


def test_save_signals_are_sent_unless_asked_not_to():
    site, user = SiteFactory(), UserFactory()
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append((kwargs.get("created"), instance._state.adding))

    signals.pre_save.connect(receiver, sender=Job)
    signals.post_save.connect(receiver, sender=Job)
    try:
        insert_one(_job(site, user))
        insert_one(_job(site, user), send_signals=False)
    finally:
        signals.pre_save.disconnect(receiver, sender=Job)
        signals.post_save.disconnect(receiver, sender=Job)
    assert seen == [(None, True), (True, False)]


def test_an_audit_row_is_what_bulk_create_writes():
    entries = [
        AuditLog(
            event_type="job.created",
            actor_ref="a",
            description=f"d{i}",
            new_values={"k": i},
            source_ip="10.0.0.1",
            prev_hash="0" * 64,
            row_hash=str(i) * 64,
        )
        for i in range(2)
    ]
    AuditLog.objects.bulk_create(entries[:1])
    insert_one(entries[1], send_signals=False)
    rows = [_row(AuditLog, e.pk) for e in entries]
    assert entries[1].pk == entries[0].pk + 1
    for row in rows:
        for column in ("id", "description", "new_values", "row_hash", "created_at"):
            row.pop(column)
    assert rows[0] == rows[1]


def test_an_expression_value_goes_through_the_orm():
    site, user = SiteFactory(), UserFactory()
    job = _job(site, user, description=Concat(Value("a"), Value("b")))
    insert_one(job)
    assert job.pk and _row(Job, job.pk)["description"] == "ab"
