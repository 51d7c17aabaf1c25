"""A job created through the API is on disk when its 201 arrives, although the audit chain's
COMMIT is asynchronous (homepot/db/postgresql/base.py, "The WAL flush of a commit, outside
the locks it held"): the connection's commit() waits for the WAL flush after the chain lock
is released, before the answer and before the dispatcher is enqueued.

What is on disk is read from PostgreSQL itself: the commit record of the job's transaction
(its xid is the row's xmin) found in the WAL with pg_walinspect, against the WAL flush
position read as soon as the answer is back. Committed data must be seen by other
connections, hence transaction=True.
"""

import threading

import pytest
from celery.signals import before_task_publish
from django.core.management import call_command
from django.db import connection
from django.urls import reverse

from accounts.tests.factories import AdminUserFactory
from homepot.db.postgresql import base as postgresql_backend
from homepot.tests.api_helpers import assert_error, token_client
from jobs_app.models import Job
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _sql(query: str, params=()):
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()[0]


@pytest.fixture
def wal():
    """pg_walinspect in the test database (a superuser's, as the suite runs); returns a
    function giving the WAL's insert position now, the start of a later search. (Searched
    right after each request: a busy server recycles WAL segments within seconds.)"""
    if not _sql("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        pytest.skip("pg_walinspect needs a superuser")
    with connection.cursor() as cursor:
        cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
    return lambda: _sql("SELECT pg_current_wal_insert_lsn()::text")


def _flushed() -> str:
    return _sql("SELECT pg_current_wal_flush_lsn()::text")


def _commit_end(table: str, pk: int, since: str) -> str:
    """The end of the commit record of the transaction that inserted row `pk` of `table`
    (the row's xmin is that transaction's xid, or one of its subtransactions' when it was
    inserted in a savepoint)."""
    # What we look for must be flushed to be read: a flush of our own first.
    _sql("SELECT pg_logical_emit_message(true, 'homepot.test', '')")
    # A model's table name.
    query = (
        "SELECT end_lsn::text FROM pg_get_wal_records_info(%s, pg_current_wal_flush_lsn()), "  # noqa: S608
        f"(SELECT xmin::text AS inserted_by FROM {table} WHERE id = %s) AS row "
        "WHERE resource_manager = 'Transaction' AND record_type LIKE 'COMMIT%%' "
        "AND (xid::text = row.inserted_by "
        "     OR description ~ ('subxacts:( [0-9]+)* ' || row.inserted_by || '( |;|$)'))"
    )
    return _sql(query, (since, pk))


def _lsn_at_least(lsn: str, other: str) -> bool:
    return _sql("SELECT %s::pg_lsn >= %s::pg_lsn", (lsn, other))


def _create(client, site, **extra):
    return client.post(
        "/api/v1/jobs", {"site_id": site.site_id, "action": "restart_pos_app", **extra}, format="json"
    )


@pytest.fixture
def publishes():
    """Dispatcher messages as they are handed to the broker, each with the WAL flush
    position at that moment (read on this thread's connection, as the hook runs)."""
    seen = []

    def record(sender=None, body=None, **kwargs):
        if sender == "jobs_app.tasks.dispatch_job":
            seen.append((body[0][0], _flushed()))

    before_task_publish.connect(record, weak=False)
    yield seen
    before_task_publish.disconnect(record)


def test_the_job_and_its_audit_row_are_on_disk_when_the_201_arrives(wal, admin_user, publishes):
    client = token_client(admin_user)
    site = SiteFactory()
    for attempt in range(5):
        since = wal()
        response = _create(client, site)
        flushed = _flushed()  # first thing after the answer
        assert response.status_code == 201, response.content
        job_id = response.json()["id"]
        audit = AuditLog.objects.get(job_id=job_id, event_type="job.created")
        job_commit = _commit_end("jobs_app_job", job_id, since)
        # One transaction: the job and its audit row commit together.
        assert _commit_end("monitoring_app_auditlog", audit.pk, since) == job_commit
        assert _lsn_at_least(flushed, job_commit), (flushed, job_commit)
        # The dispatcher was enqueued after the commit was on disk.
        assert len(publishes) == attempt + 1
        published_job, flushed_then = publishes[-1]
        assert published_job == job_id
        assert _lsn_at_least(flushed_then, job_commit), (flushed_then, job_commit)
    call_command("verify_audit")


def test_the_chain_verifies_after_creations_from_several_connections_at_once(admin_user):
    site = SiteFactory()
    clients = [token_client(AdminUserFactory()) for _ in range(4)]
    statuses, start = [], threading.Barrier(len(clients))

    def create_several(client):
        try:
            start.wait()
            for _ in range(8):
                statuses.append(_create(client, site).status_code)
        finally:
            connection.close()  # this thread's own connection

    threads = [threading.Thread(target=create_several, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [201] * 32
    rows = list(AuditLog.objects.filter(event_type="job.created").order_by("id"))
    assert len(rows) == 32 and len({row.job_id for row in rows}) == 32
    chain = list(AuditLog.objects.order_by("id").values_list("prev_hash", "row_hash"))
    assert all(prev == chain[i - 1][1] for i, (prev, _) in enumerate(chain) if i)
    call_command("verify_audit")


def test_a_failed_flush_answers_503_and_enqueues_nothing(admin_user, publishes, monkeypatch):
    client = token_client(admin_user)
    site = SiteFactory()
    # A real failure at the flush: the server ends the session right after the COMMIT.
    monkeypatch.setattr(
        postgresql_backend, "COMMIT_THEN_FLUSH", "COMMIT; SELECT pg_terminate_backend(pg_backend_pid())"
    )
    response = _create(client, site, description="flush lost")
    assert_error(response, 503, code="database_unavailable")
    assert response["Retry-After"]
    assert publishes == []
    monkeypatch.undo()

    # The COMMIT itself went through (the session ended after it): the job is there with its
    # dispatch ticket, which the beat tick turns into a dispatch once it is overdue (nothing
    # lost, nothing sent before it was durable); its audit row is in the chain.
    job = Job.objects.get(description="flush lost")
    assert job.dispatch_due_at is not None
    assert AuditLog.objects.filter(job=job, event_type="job.created").exists()
    # The next request is served on a fresh connection, durably as ever.
    response = _create(client, site)
    assert response.status_code == 201, response.content
    assert [job_id for job_id, _ in publishes] == [response.json()["id"]]
    call_command("verify_audit")


def test_an_audited_write_inside_a_longer_transaction_is_on_disk_when_it_returns(wal, admin_browser):
    # The admin saves a form in a transaction of its own, around the audited service: the
    # chain's append is not the transaction's last statement, so commit() (not the append's
    # query) waits for the flush.
    data = {
        "site_id": "site-durable",
        "name": "Harbour Street",
        "is_active": "on",
        "timezone": "Europe/London",
        "_save": "Save",
    }
    for inline in ("maintenance_windows", "blackouts"):
        data |= {f"{inline}-TOTAL_FORMS": "0", f"{inline}-INITIAL_FORMS": "0"}
    since = wal()
    response = admin_browser.post(reverse("admin:sites_app_site_add"), data)
    flushed = _flushed()  # first thing after the answer
    assert response.status_code == 302, response.content
    audit = AuditLog.objects.get(site__site_id="site-durable", event_type="site.created")
    assert _lsn_at_least(flushed, _commit_end("monitoring_app_auditlog", audit.pk, since))
    call_command("verify_audit")
