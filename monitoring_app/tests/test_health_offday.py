"""A device's latest check read from the newest days, proven by the record of reports written
outside their own day (monitoring_app.offday) instead of a probe of every older day."""

import datetime
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from monitoring_app import health_buffer, offday
from monitoring_app.models import AuditLog, HealthCheck, HealthCheckOffDay, HealthCheckOffDaySince
from monitoring_app.retention import health_history_prune
from monitoring_app.tests.factories import history_bulk_create
from monitoring_app.tests.test_ingest import BATCH, HEALTH, device_client

pytestmark = pytest.mark.django_db

URL = "/api/v1/health-checks"


def utc_midnight(days_ago: int = 0) -> datetime.datetime:
    day = timezone.now().astimezone(datetime.UTC).date() - datetime.timedelta(days=days_ago)
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC)


def write(device, *times) -> list[HealthCheck]:
    """Rows written in the given order (their ids follow it), as a bulk load writes them."""
    return history_bulk_create(HealthCheck(device=device, status="healthy", checked_at=at) for at in times)


def latest(client, device, **params) -> tuple[int, list[str]]:
    """The device's latest check through the API (page_size=1), and the request's SQL."""
    with CaptureQueriesContext(connection) as queries:
        response = client.get(URL, {"device": device.device_id, "page_size": 1, **params})
    assert response.status_code == 200, response.content
    return response.json()["results"][0]["id"], [q["sql"] for q in queries.captured_queries]


def older_days_read(sqls: list[str]) -> bool:
    """Whether a statement looked at the history before a window's midnight (the old proof)."""
    return any('FROM "monitoring_app_healthcheck"' in sql and '"checked_at" <' in sql for sql in sqls)


def newest_by_id(device) -> int:
    return HealthCheck.objects.filter(device=device).latest("id").pk


@pytest.fixture
def device():
    return DeviceFactory(device_id="dev-offday")


@pytest.fixture
def five_days(device):
    """Four rows a day for five days before today, then four today: written in time order,
    the older days' rows late (this test writes them now), today's on time."""
    rows = [
        utc_midnight(days) + datetime.timedelta(hours=2 + 5 * n) for days in range(5, 0, -1) for n in range(4)
    ]
    write(device, *rows)
    elapsed = timezone.now() - utc_midnight()
    write(device, *(utc_midnight() + elapsed * (n + 1) / 6 for n in range(4)))
    return device


@pytest.fixture(params=["direct", "buffered"])
def health_path(request, settings):
    """Reports written by the request, or taken by the Redis buffer and written by the drain."""
    settings.HOMEPOT_MONITORING_BUFFER_HEALTH = request.param == "buffered"
    settings.HOMEPOT_MONITORING_HEALTH_REDIS_DURABILITY = "assume"
    return request.param


def post_reports(agent, health_path, reports: list[dict]) -> None:
    response = agent.post(BATCH, {"reports": reports}, format="json") if len(reports) > 1 else None
    if response is None:
        response = agent.post(HEALTH, reports[0], format="json")
    assert response.status_code == 201, response.content
    if health_path == "buffered":
        health_buffer.drain(wait=True)


def test_reports_written_in_their_own_day_are_not_recorded_late_ones_are(admin_api, device, health_path):
    """Through the agent API (and the buffer's drain): the on-time reports fire nothing; a
    report from two days ago, written now, is recorded, and is the device's latest check by
    id, which the API answers without reading the older days."""
    agent = device_client(device)
    now = timezone.now()
    on_time = [
        {"status": "healthy", "timestamp": (now - datetime.timedelta(seconds=s)).isoformat()}
        for s in (30, 20)
    ]
    post_reports(agent, health_path, on_time)
    post_reports(agent, health_path, on_time[:1])
    assert not HealthCheckOffDay.objects.exists()

    late_at = utc_midnight(2) + datetime.timedelta(hours=13)
    post_reports(agent, health_path, [{"status": "degraded", "timestamp": late_at.isoformat()}])

    late = HealthCheck.objects.get(device=device, checked_at=late_at)
    record = HealthCheckOffDay.objects.get()
    assert (record.check_id, record.device_id, record.checked_at) == (late.pk, device.pk, late_at)
    answer, sqls = latest(admin_api, device)
    assert answer == late.pk == newest_by_id(device)
    assert not older_days_read(sqls)


def test_a_devices_latest_check_reads_no_older_day_whatever_the_days_kept(admin_api, five_days):
    answer, sqls = latest(admin_api, five_days)

    assert answer == newest_by_id(five_days)
    assert not older_days_read(sqls)
    history = [sql for sql in sqls if "monitoring_app_healthcheck" in sql]
    assert all('"checked_at" >=' in sql for sql in history if 'FROM "monitoring_app_healthcheck"' in sql)


def test_a_late_report_into_an_older_day_is_the_latest_check_and_pages_stay_whole(admin_api, five_days):
    late = write(five_days, utc_midnight(4) + datetime.timedelta(hours=9))[0]
    write(five_days, timezone.now() - datetime.timedelta(seconds=1))  # a newer on-time one after it

    answer, _ = latest(admin_api, five_days)
    forward, url, query = [], URL, {"device": five_days.device_id, "page_size": 2}
    while url:
        body = admin_api.get(url, query).json()
        forward += [row["id"] for row in body["results"]]
        url, query = body["next"], None

    assert answer == newest_by_id(five_days)
    expected = list(HealthCheck.objects.filter(device=five_days).order_by("-id").values_list("id", flat=True))
    assert forward == expected and late.pk in forward[:2]


def test_a_clock_ahead_at_the_allowed_skew_across_midnight(admin_api, device, settings):
    """Two reports stamped just past tomorrow's midnight by a clock ahead (written before that
    midnight: recorded as early), then one on time with a higher id. Asked a second after that
    midnight, the API's window "since today" holds only the early two; the on-time report,
    checked before the window, has the higher id: the page must not come from the window."""
    tomorrow = utc_midnight(-1)
    early = write(device, tomorrow + datetime.timedelta(seconds=5), tomorrow + datetime.timedelta(seconds=10))
    on_time = write(device, timezone.now())[0]
    assert set(HealthCheckOffDay.objects.values_list("check_id", flat=True)) == {row.pk for row in early}

    with mock.patch(
        "monitoring_app.api.views.timezone.now", return_value=tomorrow + datetime.timedelta(seconds=1)
    ):
        answer, sqls = latest(admin_api, device)

    assert answer == on_time.pk
    assert older_days_read(sqls)  # the record could not tell: the older days were looked at


def test_the_api_and_the_admin_answer_the_same_latest_check(admin_api, admin_client, device, settings):
    """A report at the allowed clock skew (ahead of the server) is both the newest by id (the
    API's order) and by time (the admin's)."""
    agent = device_client(device)
    skew = datetime.timedelta(seconds=settings.HOMEPOT_MONITORING_CLOCK_SKEW_SECONDS - 30)
    for at in (timezone.now() - datetime.timedelta(minutes=3), timezone.now() + skew):
        response = agent.post(HEALTH, {"status": "healthy", "timestamp": at.isoformat()}, format="json")
        assert response.status_code == 201, response.content

    answer, _ = latest(admin_api, device)
    page = admin_client.get("/admin/monitoring_app/healthcheck/", {"q": device.device_id})

    assert page.status_code == 200
    assert page.context["cl"].result_list[0].pk == answer == newest_by_id(device)


def test_retention_removes_the_records_of_the_days_it_drops_and_keeps_the_rest(admin_api, device, settings):
    settings.HOMEPOT_MONITORING_RETENTION_DAYS = 30
    dropped = write(device, *(utc_midnight(32) + datetime.timedelta(hours=h) for h in (1, 2, 3)))
    # Before the cutoff, but in a day partly after it, which retention keeps whole: so its record.
    cutoff = timezone.now() - datetime.timedelta(days=30)
    kept = write(device, cutoff - (cutoff - utc_midnight(30)) / 2)
    write(device, *(timezone.now() - datetime.timedelta(minutes=m) for m in (3, 2, 1)))
    late_kept = write(device, utc_midnight(2) + datetime.timedelta(hours=1))[0]  # the newest by id

    health_history_prune()

    remaining = set(HealthCheckOffDay.objects.values_list("check_id", flat=True))
    assert remaining == {kept[0].pk, late_kept.pk}
    assert not remaining & {row.pk for row in dropped}
    audit = AuditLog.objects.filter(event_type="health.pruned").latest("id")
    assert audit.new_values["offday_records_deleted"] == 3
    assert latest(admin_api, device)[0] == late_kept.pk


def test_rows_older_than_the_record_are_proven_by_the_older_days(admin_api, five_days):
    """A database migrated with history: rows written before the trigger are not recorded, so
    a page reaching back to them is proven the old way."""
    HealthCheckOffDaySince.objects.update(check_id=newest_by_id(five_days))

    answer, sqls = latest(admin_api, five_days)

    assert answer == newest_by_id(five_days)
    assert older_days_read(sqls)


def test_installing_the_trigger_starts_the_record_after_the_last_id(device):
    write(device, timezone.now())
    with connection.cursor() as cursor:
        start = offday.offday_trigger_install(cursor)

    assert start >= newest_by_id(device)
    assert HealthCheckOffDaySince.objects.get().check_id == start
    new = write(device, utc_midnight(3))[0]
    assert new.pk > start and HealthCheckOffDay.objects.filter(check_id=new.pk).exists()


def test_a_row_copied_again_is_recorded_once(device):
    row = write(device, utc_midnight(3))[0]
    with connection.cursor() as cursor:  # what a partition move does: the same row written again
        cursor.execute(
            "WITH moved AS (DELETE FROM monitoring_app_healthcheck WHERE id = %s RETURNING *) "
            "INSERT INTO monitoring_app_healthcheck SELECT * FROM moved",
            [row.pk],
        )

    assert list(HealthCheckOffDay.objects.values_list("check_id", flat=True)) == [row.pk]
