"""homepot.compiled_sql: a row read or written from SQL compiled once is the row the ORM reads or
writes, and anything it does not reproduce goes through the ORM."""

import datetime

import pytest
from django.db import connection
from django.db.models import Value, signals
from django.db.models.functions import Concat
from django.test.utils import CaptureQueriesContext

from accounts.tests.factories import UserFactory
from homepot.compiled_sql import (
    ParameterisedRead,
    RowByUniqueColumn,
    compiled,
    fetch_prebuilt,
    insert_one,
    prebuilt,
)
from jobs_app.models import Job
from monitoring_app.models import AuditLog
from sites_app.models import Site
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


def test_a_plan_is_built_once_per_key_and_database():
    built = []

    def build(conn):
        built.append(conn.alias)
        return object()

    first = compiled(("test.once", 1), "default", build)
    assert compiled(("test.once", 1), "default", build) is first
    assert compiled(("test.once", 2), "default", build) is not first
    assert built == ["default", "default"]


def test_a_prebuilt_read_runs_the_statement_the_orm_compiled_and_only_that():
    SiteFactory(site_id="site-pre-1", region="North")
    SiteFactory(site_id="site-pre-2", region="South")
    calls = []

    @prebuilt("test.sites_in_region")
    def sites_in_region(region):
        calls.append(region)
        return lambda: list(
            Site.objects.filter(region=region).order_by("site_id").values("site_id", "region")
        )

    assert fetch_prebuilt("test.sites_in_region", "North") == [{"site_id": "site-pre-1", "region": "North"}]
    with CaptureQueriesContext(connection) as queries:
        assert fetch_prebuilt("test.sites_in_region", "North") == [
            {"site_id": "site-pre-1", "region": "North"}
        ]
        assert fetch_prebuilt("test.sites_in_region", "South") == [
            {"site_id": "site-pre-2", "region": "South"}
        ]
    # Compiled once per key (the region is part of it); each fetch is one statement.
    assert calls == ["North", "South"]
    assert len(queries) == 2


def test_a_row_by_unique_column_is_the_orms_instance():
    site = SiteFactory(site_id="site-unique")
    lookup = RowByUniqueColumn(Site, "site_id")
    with CaptureQueriesContext(connection) as queries:
        found = lookup.get("site-unique")
        missing = lookup.get("site-none")
    assert len(queries) == 2 and missing is None
    expected = Site.objects.get(pk=site.pk)
    assert {f.attname: getattr(found, f.attname) for f in Site._meta.concrete_fields} == {
        f.attname: getattr(expected, f.attname) for f in Site._meta.concrete_fields
    }
    with pytest.raises(ValueError, match="not unique"):
        RowByUniqueColumn(Site, "region")


def _jobs_of(site, since, action, *, limit):
    return (
        Job.objects.filter(site_id=site, created_at__gte=since, action=action)
        .order_by("-id")
        .values_list("id", "created_at", "payload", "site__site_id")[:limit]
    )


def test_a_parameterised_read_gives_the_orms_rows_for_any_values_from_one_compile():
    user = UserFactory()
    north, south = SiteFactory(site_id="site-north"), SiteFactory(site_id="site-south")
    for site in (north, south, north):
        _job(site, user).save()
    other = _job(north, user)
    other.action = "health_check"
    other.save()
    built = []

    def build(*args, limit):
        built.append(args)
        return _jobs_of(*args, limit=limit)

    read = ParameterisedRead(build, int, datetime.datetime, str)
    long_ago = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cases = [
        (north.pk, long_ago, "restart_pos_app"),
        (south.pk, long_ago, "health_check"),
        (north.pk, long_ago, "health_check"),
    ]
    later = Job.objects.order_by("id")[1].created_at
    cases.append((north.pk, later, "restart_pos_app"))
    with CaptureQueriesContext(connection) as queries:
        for case in cases:
            # Columns converted as the ORM does (the payload's JSON decoded).
            assert read.rows(*case, limit=5) == [list(row) for row in _jobs_of(*case, limit=5)]
    assert len(queries) == 2 * len(cases)
    assert read.rows(north.pk, long_ago, "restart_pos_app", limit=1) == [
        list(_jobs_of(north.pk, long_ago, "restart_pos_app", limit=1)[0])
    ]
    # Compiled twice (two sets of made-up values) per limit, whatever the values since.
    assert len(built) == 4


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (
            lambda site, *, limit: Site.objects.filter(site_id__icontains=site).values_list("id")[:limit],
            "transformed",
        ),
        (lambda n, *, limit: Site.objects.values_list("id")[:n], "text"),
        (lambda n, *, limit: Site.objects.filter(id__gte=0).values_list("id")[:limit], "do not reach"),
    ],
)
def test_a_value_that_does_not_reach_the_statement_as_given_is_refused(build, reason):
    kind = str if reason == "transformed" else int
    with pytest.raises(ValueError, match=reason):
        ParameterisedRead(build, kind).rows("x" if kind is str else 3, limit=2)
    with pytest.raises(ValueError, match="no slot"):
        ParameterisedRead(build, float)
