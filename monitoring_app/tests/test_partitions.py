"""Health history by day (PostgreSQL partitions): the ingest lands at any time (a missing day
is created by the write that needs it), the hourly maintenance creates days ahead, retention
detaches whole days concurrently with the ingest (audited, resumable), migration 0021 retires
the DEFAULT partition, and `partition_history` moves a plain table's rows across online with
the reads unchanged."""

import datetime
import importlib
import io
import threading
import time

import pytest
from django.core.management import call_command
from django.db import connection, connections, transaction
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.tests.factories import DeviceFactory
from monitoring_app import partitions
from monitoring_app.ingest import HealthReport, health_reports_record, health_reports_store
from monitoring_app.models import (
    AuditLog,
    DeviceStatusChange,
    HealthCheck,
    HealthCheckOffDay,
    HealthCheckOffDaySince,
    MonitoringState,
)
from monitoring_app.retention import health_history_prune
from monitoring_app.tasks import drain_health_reports, maintain_history_partitions, prune_health_history
from monitoring_app.tests.factories import HealthCheckFactory
from monitoring_app.tests.test_health_buffer import own_redis, reporting_device  # noqa: F401 (fixture)
from monitoring_app.tests.test_ingest import BATCH, HEALTH, device_client

pytestmark = pytest.mark.django_db

HEALTH_TABLE = partitions.HEALTH.table


def utc_today() -> datetime.date:
    return timezone.now().astimezone(datetime.UTC).date()


def midnight(day: datetime.date) -> datetime.datetime:
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)


def rows_in(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {connection.ops.quote_name(table)}")  # noqa: S608
        return cursor.fetchone()[0]


def partition_of(day: datetime.date) -> str:
    return partitions.HEALTH.day_partition(day)


def names() -> set[str]:
    return {p.name for p in partitions.partitions(partitions.HEALTH)}


def drop_partitions_from(day: datetime.date) -> None:
    """As if the scheduler had been down since before `day`: no partition from then on."""
    with connection.cursor() as cursor:
        for part in partitions.partitions(partitions.HEALTH):
            if part.lower is not None and part.lower.date() >= day:
                cursor.execute(f"DROP TABLE {part.name}")


def report(agent, when: datetime.datetime, status="healthy"):
    response = agent.post(HEALTH, {"status": status, "timestamp": when.isoformat()}, format="json")
    assert response.status_code == 201, response.content
    return response


@pytest.fixture
def device():
    return DeviceFactory(status=DeviceStatus.ONLINE)


@pytest.fixture
def agent(device):
    return device_client(device)


def test_the_history_tables_are_partitioned_by_day_with_days_ahead_and_no_default():
    for history in partitions.HISTORY_TABLES:
        assert partitions.is_partitioned(history.table)
        found = {p.name for p in partitions.partitions(history)}
        assert not partitions.has_default_partition(history)
        assert history.default_partition not in found
        assert history.day_partition(utc_today()) in found
        assert history.day_partition(utc_today() + datetime.timedelta(days=1)) in found


def test_reports_either_side_of_midnight_go_to_their_own_day(agent):
    today = utc_today()
    report(agent, midnight(today) - datetime.timedelta(microseconds=1))
    report(agent, midnight(today))

    assert rows_in(partition_of(today - datetime.timedelta(days=1))) == 1
    assert rows_in(partition_of(today)) == 1


def test_with_the_scheduler_down_the_ingest_creates_the_days_it_needs(agent, device, admin_api, settings):
    # Nothing created from today on: the scheduler has been down for more than the days ahead.
    today = utc_today()
    drop_partitions_from(today)
    skewed = timezone.now() + datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS - 5)
    report(agent, timezone.now(), status="degraded")
    report(agent, skewed)  # a device clock at the allowed skew

    skewed_day = skewed.astimezone(datetime.UTC).date()  # tomorrow when just before midnight
    assert partition_of(today) in names() and partition_of(skewed_day) in names()
    stored = rows_in(partition_of(today)) + (rows_in(partition_of(skewed_day)) if skewed_day != today else 0)
    assert stored == 2
    listed_before = admin_api.get("/api/v1/health-checks").json()["results"]
    assert len(listed_before) == 2

    maintain_history_partitions()

    assert HealthCheck.objects.filter(device=device).count() == 2
    assert admin_api.get("/api/v1/health-checks").json()["results"] == listed_before
    ahead = today + datetime.timedelta(days=settings.HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD)
    assert partition_of(ahead) in names()


def test_a_catch_up_report_from_days_ago_is_kept(agent, device):
    # The partition of three days ago was never created (the database is younger).
    three_days_ago = timezone.now() - datetime.timedelta(days=3) + datetime.timedelta(minutes=5)
    drop_partitions_from(three_days_ago.date())  # and no day from then on either

    report(agent, three_days_ago, status="unhealthy")
    report(agent, timezone.now())

    assert sorted(HealthCheck.objects.filter(device=device).values_list("status", flat=True)) == [
        "healthy",
        "unhealthy",
    ]
    assert rows_in(partition_of(three_days_ago.astimezone(datetime.UTC).date())) == 1


def test_a_batch_spanning_missing_days_is_stored_whole(agent, device):
    drop_partitions_from(utc_today() - datetime.timedelta(days=2))
    stamps = [timezone.now() - datetime.timedelta(days=d) for d in (2, 1, 0)]
    response = agent.post(
        BATCH,
        {"reports": [{"status": "healthy", "timestamp": t.isoformat()} for t in stamps]},
        format="json",
    )

    assert response.status_code == 201, response.content
    assert HealthCheck.objects.filter(device=device).count() == 3
    for stamp in stamps:
        assert rows_in(partition_of(stamp.astimezone(datetime.UTC).date())) == 1


def test_the_sweep_creates_the_day_of_its_transitions(device, settings):
    from monitoring_app.sweep import sweep_offline

    drop_partitions_from(utc_today())
    with connection.cursor() as cursor:
        for part in partitions.partitions(partitions.STATUS_CHANGES, cursor):
            if part.lower is not None and part.lower.date() >= utc_today():
                cursor.execute(f"DROP TABLE {part.name}")
    DeviceStatusChange.objects.all().delete()
    device.last_seen = timezone.now() - datetime.timedelta(hours=2)
    device.save(update_fields=["last_seen"])
    # Monitoring has been running: no fresh grace period after a resume.
    MonitoringState.objects.update_or_create(
        pk=1,
        defaults={"last_sweep_at": timezone.now(), "resumed_at": timezone.now() - datetime.timedelta(days=1)},
    )
    result = sweep_offline()

    assert result.marked_offline == 1
    assert DeviceStatusChange.objects.filter(device=device, new_status="offline").count() == 1


def test_maintenance_twice_creates_nothing_more(settings):
    settings.HOMEPOT_MONITORING_PARTITION_DAYS_AHEAD = 10
    first = partitions.history_partitions_maintain()
    second = partitions.history_partitions_maintain()

    assert partition_of(utc_today() + datetime.timedelta(days=10)) in first.created
    assert second.created == []


def test_retention_drops_whole_days_keeps_a_day_partly_past_and_audits(settings):
    settings.HOMEPOT_MONITORING_RETENTION_DAYS = 30
    now = midnight(utc_today()) + datetime.timedelta(hours=12)
    cutoff = now - datetime.timedelta(days=30)  # noon, 30 days ago
    device = DeviceFactory()
    gone = HealthCheckFactory.create_batch(4, device=device, checked_at=cutoff - datetime.timedelta(days=1))
    partly = HealthCheckFactory.create_batch(
        2, device=device, checked_at=cutoff - datetime.timedelta(hours=6)
    )
    kept = HealthCheckFactory.create_batch(3, device=device, checked_at=cutoff + datetime.timedelta(hours=13))
    partitions.history_write(
        lambda: DeviceStatusChange.objects.create(
            device=device,
            old_status="online",
            new_status="offline",
            reason="silent",
            changed_at=cutoff - datetime.timedelta(days=2),
        )
    )
    old_day = partition_of((cutoff - datetime.timedelta(days=1)).date())
    assert old_day in names()

    removed = health_history_prune(now=now)

    assert removed == len(gone)
    left = set(HealthCheck.objects.values_list("pk", flat=True))
    assert left == {c.pk for c in partly + kept}  # the cutoff's own day waits until wholly past
    assert old_day not in names()
    assert not DeviceStatusChange.objects.exists()
    audit = AuditLog.objects.get(event_type="health.pruned")
    assert audit.new_values["deleted"] == 4
    assert audit.new_values["status_changes_deleted"] == 1
    assert old_day in audit.new_values["partitions_dropped"]
    assert audit.new_values["retention_days"] == 30

    # A day later, the cutoff's day is wholly past: it goes too.
    health_history_prune(now=now + datetime.timedelta(days=1))
    assert set(HealthCheck.objects.values_list("pk", flat=True)) == {c.pk for c in kept}


def add_default_partition() -> None:
    """As a database made before migration 0021: a DEFAULT partition, catching the rows of
    days that have no partition."""
    with connection.cursor() as cursor:
        for history in partitions.HISTORY_TABLES:
            cursor.execute(f"CREATE TABLE {history.default_partition} PARTITION OF {history.table} DEFAULT")


def test_retention_deletes_old_strays_in_a_default_partition_left_from_before_0021():
    add_default_partition()
    device = DeviceFactory()
    with connection.cursor() as cursor:  # a stray, as the ingest wrote them before 0021
        cursor.execute(
            f"INSERT INTO {HEALTH_TABLE} (device_id, status, metrics, error_message, checked_at) "  # noqa: S608
            "VALUES (%s, 'healthy', '{}', '', %s)",
            [device.pk, timezone.now() - datetime.timedelta(days=45)],
        )
    assert rows_in(partitions.HEALTH.default_partition) == 1

    assert health_history_prune() == 1
    assert not HealthCheck.objects.exists()


# --- partition_history: a plain table moved across ----------------------------------------


def make_health_table_plain() -> None:
    """Put a plain health table (as before migration 0016) in place of the partitioned one;
    the test's transaction rolls it all back."""
    with connection.cursor() as cursor:
        for part in partitions.partitions(partitions.HEALTH, cursor):
            cursor.execute(f"ALTER TABLE {part.name} RENAME TO {part.name}_saved")
        cursor.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'I' AND oid IN "
            "(SELECT indexrelid FROM pg_index WHERE indrelid = to_regclass(%s))",
            [HEALTH_TABLE],
        )
        for (index,) in cursor.fetchall():
            cursor.execute(f"ALTER INDEX {index} RENAME TO {index[:40]}_saved")
        cursor.execute(f"ALTER TABLE {HEALTH_TABLE} RENAME TO {HEALTH_TABLE}_saved")
        cursor.execute(f"ALTER SEQUENCE {HEALTH_TABLE}_id_seq RENAME TO {HEALTH_TABLE}_saved_seq")
    with connection.schema_editor(atomic=False) as editor:
        editor.create_model(HealthCheck)
    assert not partitions.is_partitioned(HEALTH_TABLE)


def test_partition_history_moves_a_plain_tables_rows_resumably_with_ingest_between(
    agent, device, admin_api, admin_browser
):
    make_health_table_plain()
    old = [
        HealthCheckFactory(device=device, checked_at=timezone.now() - datetime.timedelta(days=d, minutes=m))
        for d in range(4)
        for m in (1, 2)
    ]
    api_before = admin_api.get("/api/v1/health-checks?page_size=50").json()["results"]
    admin_before = admin_browser.get("/admin/monitoring_app/healthcheck/?window=all").content.decode()
    timeline_before = admin_api.get(f"/api/v1/fleet/devices/{device.device_id}/timeline").json()

    # Interrupted after the swap and one batch; a report arrives meanwhile; then run again.
    assert partitions.history_table_swap(partitions.HEALTH)
    assert partitions.history_copy_batch(partitions.HEALTH, batch_size=3) == 3
    report(agent, timezone.now())
    # Meanwhile the off-day record (not on the new table yet) is trusted for no page.
    assert HealthCheckOffDaySince.objects.get().check_id == 2**63 - 1
    out = io.StringIO()
    call_command("partition_history", batch_size=2, table=[HEALTH_TABLE], stdout=out)
    assert "partitioned by day, old table gone" in out.getvalue()

    assert partitions.is_partitioned(HEALTH_TABLE)
    assert not partitions._exists(partitions.HEALTH.unpartitioned)
    assert HealthCheck.objects.count() == len(old) + 1
    api_after = admin_api.get("/api/v1/health-checks?page_size=50").json()["results"]
    assert api_after[1:] == api_before  # the same rows and ids, the new report on top
    newest = HealthCheck.objects.order_by("-id").first()
    assert newest.id > max(c.pk for c in old)  # ids continue from the old sequence
    timeline_after = admin_api.get(f"/api/v1/fleet/devices/{device.device_id}/timeline").json()
    health_events = [e for e in timeline_after["events"] if e["type"] == "health"]
    assert len(health_events) == len(old) + 1
    assert [e for e in timeline_before["events"] if e["type"] == "health"] == health_events[1:]
    admin_after = admin_browser.get("/admin/monitoring_app/healthcheck/?window=all").content.decode()
    for check in old:
        assert f"/admin/monitoring_app/healthcheck/{check.pk}/change/" in admin_before
        assert f"/admin/monitoring_app/healthcheck/{check.pk}/change/" in admin_after
    # The record starts after the rows moved across, none of which it holds; a late report
    # written now is in it.
    assert HealthCheckOffDaySince.objects.get().check_id == newest.id
    assert not HealthCheckOffDay.objects.filter(check_id__lte=newest.id).exists()
    late = HealthCheckFactory(device=device, checked_at=timezone.now() - datetime.timedelta(days=2))
    assert HealthCheckOffDay.objects.filter(check_id=late.pk).exists()


def test_partition_history_on_a_partitioned_table_changes_nothing():
    HealthCheckFactory()
    call_command("partition_history", stdout=io.StringIO())
    assert partitions.is_partitioned(HEALTH_TABLE) and HealthCheck.objects.count() == 1


def run_migration_0016() -> None:
    migration = importlib.import_module("monitoring_app.migrations.0016_partitioned_history")
    with connection.schema_editor(atomic=False) as editor:
        migration.partition_small_history(None, editor)


def test_the_migration_partitions_a_small_plain_table_with_its_rows(settings):
    make_health_table_plain()
    checks = HealthCheckFactory.create_batch(3, checked_at=timezone.now() - datetime.timedelta(days=2))
    settings.HOMEPOT_MONITORING_PARTITION_MIGRATE_MAX_ROWS = 3

    run_migration_0016()

    assert partitions.is_partitioned(HEALTH_TABLE)
    assert set(HealthCheck.objects.values_list("pk", flat=True)) == {c.pk for c in checks}
    two_days_ago = (timezone.now() - datetime.timedelta(days=2)).astimezone(datetime.UTC).date()
    assert rows_in(partition_of(two_days_ago)) == 3


def test_the_migration_leaves_a_big_table_plain_and_retention_still_deletes_from_it(settings, capsys):
    make_health_table_plain()
    HealthCheckFactory.create_batch(3, checked_at=timezone.now() - datetime.timedelta(days=40))
    kept = HealthCheckFactory()
    settings.HOMEPOT_MONITORING_PARTITION_MIGRATE_MAX_ROWS = 2

    run_migration_0016()

    assert not partitions.is_partitioned(HEALTH_TABLE)
    assert "partition_history" in capsys.readouterr().out
    assert health_history_prune() == 3
    assert list(HealthCheck.objects.values_list("pk", flat=True)) == [kept.pk]
    assert AuditLog.objects.get(event_type="health.pruned").new_values["partitions_dropped"] == []


def test_a_day_detached_but_not_dropped_goes_with_the_next_retention_task_or_maintenance():
    old_day = utc_today() - datetime.timedelta(days=40)
    older_day = old_day - datetime.timedelta(days=1)
    with connection.cursor() as cursor:  # as a crash between DETACH and DROP leaves them
        cursor.execute(f"CREATE TABLE {partition_of(old_day)} (LIKE {HEALTH_TABLE})")
        cursor.execute(f"CREATE TABLE {partition_of(utc_today() - datetime.timedelta(days=2))}_x (id int)")

    prune_health_history()

    assert not partitions._exists(partition_of(old_day))
    assert partitions._exists(partition_of(utc_today() - datetime.timedelta(days=2)) + "_x")

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {partition_of(older_day)} (LIKE {HEALTH_TABLE})")
    assert maintain_history_partitions()["reclaimed"] == 1
    assert not partitions._exists(partition_of(older_day))


def old_day_with_rows(device, days: int = 40) -> tuple[str, list]:
    """A day partition `days` days back holding a few checks of `device`."""
    when = timezone.now() - datetime.timedelta(days=days)
    rows = HealthCheckFactory.create_batch(3, device=device, checked_at=when)
    name = partition_of(when.astimezone(datetime.UTC).date())
    assert name in names() and rows_in(name) == 3
    with connection.cursor() as cursor:  # the insert counts reach the statistics retention reads
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT 1")
    return name, rows


def test_retention_detaches_the_old_day_and_the_task_then_removes_its_table(settings):
    device = DeviceFactory()
    name, old = old_day_with_rows(device)
    recent = HealthCheckFactory(device=device, checked_at=timezone.now())

    assert health_history_prune() == 3

    assert name not in names()
    assert list(HealthCheck.objects.values_list("pk", flat=True)) == [recent.pk]
    assert partitions._exists(name)  # detached: out of every query, its files not removed yet
    audit = AuditLog.objects.get(event_type="health.pruned")
    assert audit.new_values["deleted"] == 3 and name in audit.new_values["partitions_dropped"]

    prune_health_history()  # the task: nothing more to detach, then the files go

    assert not partitions._exists(name)
    assert AuditLog.objects.filter(event_type="health.pruned").count() == 2


@pytest.mark.django_db(transaction=True)
def test_retention_while_reports_arrive_loses_none_and_removes_the_old_day():
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    agent = device_client(device)
    name, old = old_day_with_rows(device)
    answers, stop = [], threading.Event()

    def ingest():
        try:
            while not stop.is_set():
                answers.append(agent.post(HEALTH, {"status": "healthy"}, format="json").status_code)
        finally:
            connections.close_all()

    sender = threading.Thread(target=ingest)
    sender.start()
    try:
        while len(answers) < 3:  # the ingest is under way before the retention starts
            time.sleep(0.01)
        before = len(answers)
        removed = prune_health_history()
        while len(answers) < before + 3:  # and goes on after it
            time.sleep(0.01)
    finally:
        stop.set()
        sender.join()

    assert removed == 3
    assert set(answers) == {201}
    assert not HealthCheck.objects.filter(pk__in=[c.pk for c in old]).exists()
    assert HealthCheck.objects.filter(device=device).count() == len(answers)  # every report kept
    assert name not in names() and not partitions._exists(name)
    audit = AuditLog.objects.get(event_type="health.pruned")
    assert audit.new_values["partitions_dropped"] == [name]


def hold_history_open(device, holding: threading.Event, release: threading.Event) -> None:
    """A transaction that read the history and wrote a report, left open until `release`:
    what a slow reader or a report's transaction holds (ACCESS SHARE and ROW EXCLUSIVE on
    the history, the device row locked)."""
    try:
        with transaction.atomic():
            list(HealthCheck.objects.filter(device=device).values_list("pk", flat=True))
            health_reports_record(device_reports=[(device.pk, HealthReport("healthy", timezone.now()))])
            holding.set()
            release.wait(30)
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_the_concurrent_detach_waits_for_open_transactions_without_blocking_writers(settings):
    device, writer = DeviceFactory(status=DeviceStatus.ONLINE), DeviceFactory(status=DeviceStatus.ONLINE)
    name, old = old_day_with_rows(device)
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_history_open, args=(device, holding, release))
    holder.start()
    result = {}

    def retention():
        try:
            result["removed"] = health_history_prune()
        finally:
            connections.close_all()

    pruner = threading.Thread(target=retention)
    try:
        holding.wait(30)
        pruner.start()
        time.sleep(0.5)  # the DETACH has committed its first step and waits for the holder
        assert pruner.is_alive()
        assert name not in {p.name for p in partitions.partitions(partitions.HEALTH) if not p.detach_pending}
        # Writers go on meanwhile: a plain DETACH (ACCESS EXCLUSIVE) would queue them all.
        started = time.perf_counter()
        for _ in range(5):
            health_reports_record(device_reports=[(writer.pk, HealthReport("healthy", timezone.now()))])
        writes_took = time.perf_counter() - started
        assert not HealthCheck.objects.filter(pk__in=[c.pk for c in old]).exists()  # gone from reads
    finally:
        release.set()
        holder.join()
        pruner.join(30)

    assert writes_took < 2.0
    assert result["removed"] == 3
    assert name not in names() and partitions._exists(name)  # detached, files left for reclaim
    assert HealthCheck.objects.filter(device=writer).count() == 5
    assert HealthCheck.objects.filter(device=device).count() == 1  # the holder's report
    audit = AuditLog.objects.get(event_type="health.pruned")
    assert audit.new_values["partitions_dropped"] == [name] and audit.new_values["deleted"] == 3


@pytest.mark.django_db(transaction=True)
def test_a_detach_interrupted_by_a_long_transaction_is_finished_by_the_next_run(settings):
    settings.HOMEPOT_MONITORING_RETENTION_CONCURRENT_TIMEOUT_MS = 200
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    name, old = old_day_with_rows(device)
    holding, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=hold_history_open, args=(device, holding, release))
    holder.start()
    try:
        holding.wait(30)
        first = health_history_prune()  # its wait for the holder times out: left pending
        pending = [p for p in partitions.partitions(partitions.HEALTH) if p.detach_pending]
        hidden = not HealthCheck.objects.filter(pk__in=[c.pk for c in old]).exists()
    finally:
        release.set()
        holder.join()

    assert first == 0
    assert [p.name for p in pending] == [name]
    assert hidden  # new queries no longer see a day whose detach is pending

    assert prune_health_history() == 3  # FINALIZE, then the files go

    assert name not in names() and not partitions._exists(name)
    dropped = [
        a.new_values["partitions_dropped"] for a in AuditLog.objects.filter(event_type="health.pruned")
    ]
    assert sorted(dropped, key=len) == [[], [name]]


# --- a missing day created by the write that needs it, under concurrency ----------------------


def drop_day(history: partitions.HistoryTable, day: datetime.date) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {history.day_partition(day)}")


@pytest.mark.django_db(transaction=True)
def test_reports_from_several_processes_at_once_create_a_missing_day_once():
    today = utc_today()
    drop_day(partitions.HEALTH, today)
    devices = [DeviceFactory(status=DeviceStatus.OFFLINE) for _ in range(6)]  # written at once
    agents = [device_client(d) for d in devices]
    start, answers = threading.Barrier(len(agents)), []

    def send(agent):
        try:
            start.wait(10)
            answers.append(agent.post(HEALTH, {"status": "healthy"}, format="json").status_code)
        finally:
            connections.close_all()

    senders = [threading.Thread(target=send, args=(a,)) for a in agents]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)

    assert answers == [201] * len(agents)
    assert rows_in(partition_of(today)) == len(agents)
    covering = [p for p in partitions.partitions(partitions.HEALTH) if p.lower == midnight(today)]
    assert [p.name for p in covering] == [partition_of(today)]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("own_redis")
def test_the_drain_creates_a_missing_day_and_stores_every_buffered_report():
    device = reporting_device()
    stamps = [timezone.now() - datetime.timedelta(seconds=s) for s in (3, 2, 1)]
    for stamp in stamps:
        response = device.agent.post(
            HEALTH, {"status": "healthy", "timestamp": stamp.isoformat()}, format="json"
        )
        assert response.status_code == 201
    assert not HealthCheck.objects.exists()  # in Redis
    drop_day(partitions.HEALTH, utc_today())
    for stamp in stamps:  # the scheduler was down: none of their days exists
        drop_day(partitions.HEALTH, stamp.astimezone(datetime.UTC).date())

    drain_health_reports()

    assert HealthCheck.objects.filter(device=device).count() == 3
    assert partition_of(utc_today()) in names()


# --- the device's history without a foreign key ------------------------------------------------


def test_deleting_a_device_deletes_its_history_through_the_api_and_in_sql(admin_api):
    kept, gone, raw = DeviceFactory(), DeviceFactory(), DeviceFactory()
    for device in (kept, gone, raw):
        HealthCheckFactory.create_batch(2, device=device)
        HealthCheckFactory(device=device, checked_at=timezone.now() - datetime.timedelta(days=3))
    health_reports_record(device_reports=[(raw.pk, HealthReport("healthy", timezone.now()))])

    assert admin_api.delete(f"/devices/{gone.device_id}").status_code == 204
    with connection.cursor() as cursor:  # a delete Django's cascade does not see: the trigger
        cursor.execute("DELETE FROM devices_app_device WHERE id = %s", [raw.pk])

    assert set(HealthCheck.objects.values_list("device_id", flat=True)) == {kept.pk}
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {HEALTH_TABLE} WHERE device_id IN (%s, %s)", [gone.pk, raw.pk])  # noqa: S608
        assert cursor.fetchone()[0] == 0


def test_a_report_of_a_device_deleted_meanwhile_is_dropped_not_an_error():
    device, other = DeviceFactory(), DeviceFactory()
    deleted_pk = device.pk
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM devices_app_device WHERE id = %s", [deleted_pk])
    now = timezone.now()

    health_reports_record(device_reports=[(deleted_pk, HealthReport("healthy", now))])
    health_reports_store(
        device_reports=[
            (deleted_pk, now, HealthReport("healthy", now)),
            (other.pk, now, HealthReport("healthy", now)),
        ]
    )

    assert list(HealthCheck.objects.values_list("device_id", flat=True)) == [other.pk]


def test_the_history_has_no_foreign_key_to_the_device_table():
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT conrelid::regclass::text FROM pg_constraint
               WHERE contype = 'f' AND confrelid = 'devices_app_device'::regclass"""
        )
        referencing = [row[0] for row in cursor.fetchall()]
    assert not [t for t in referencing if t.startswith(tuple(h.table for h in partitions.HISTORY_TABLES))]
    assert referencing  # the query does find the other tables' keys


# --- migration 0021: a database made before it --------------------------------------------------


def run_migration_0021() -> None:
    migration = importlib.import_module("monitoring_app.migrations.0021_history_without_default_partition")
    with connection.schema_editor(atomic=False) as editor:
        migration.history_detach_from_devices(None, editor)


def test_migration_0021_moves_the_default_partitions_rows_into_days_and_drops_it(admin_api):
    add_default_partition()
    device = DeviceFactory()
    stray_days = [utc_today() - datetime.timedelta(days=n) for n in (12, 11, 11)]
    with connection.cursor() as cursor:
        for day in sorted(set(stray_days)):
            drop_day(partitions.HEALTH, day)
        for day in stray_days:
            cursor.execute(
                f"INSERT INTO {HEALTH_TABLE} (device_id, status, metrics, error_message, checked_at) "  # noqa: S608
                "VALUES (%s, 'degraded', '{}', '', %s)",
                [device.pk, midnight(day) + datetime.timedelta(hours=3)],
            )
    HealthCheckFactory(device=device)
    assert rows_in(partitions.HEALTH.default_partition) == 3
    listed_before = admin_api.get("/api/v1/health-checks?page_size=50").json()["results"]

    run_migration_0021()
    run_migration_0021()  # a repeat (a migration resumed) finds nothing to do

    assert not partitions.has_default_partition(partitions.HEALTH)
    assert not partitions.has_default_partition(partitions.STATUS_CHANGES)
    assert rows_in(partition_of(stray_days[0])) == 1 and rows_in(partition_of(stray_days[1])) == 2
    assert admin_api.get("/api/v1/health-checks?page_size=50").json()["results"] == listed_before
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'monitoring_history_device_deleted'")
        assert cursor.fetchone()[0] == 1
