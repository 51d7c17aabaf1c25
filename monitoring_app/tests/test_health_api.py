"""GET /api/v1/health-checks: the health history, scoped, filtered, keyset-paged, read-only."""

import datetime

import pytest
from django.utils import timezone

from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from monitoring_app.tests.factories import HealthCheckFactory, history_bulk_create
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/health-checks"


@pytest.fixture
def two_sites():
    a, b = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    return DeviceFactory(site=a, device_id="dev-a"), DeviceFactory(site=b, device_id="dev-b")


def ids(response) -> list[int]:
    assert response.status_code == 200, response.content
    return [row["id"] for row in response.json()["results"]]


def test_a_member_lists_only_their_sites_checks_newest_first(two_sites):
    dev_a, dev_b = two_sites
    older, newer = HealthCheckFactory(device=dev_a), HealthCheckFactory(device=dev_a, status="degraded")
    HealthCheckFactory(device=dev_b)
    membership = SiteMembershipFactory(site=dev_a.site, role="viewer")

    response = token_client(membership.user).get(URL)

    assert ids(response) == [newer.pk, older.pk]
    row = response.json()["results"][0]
    assert (row["device"], row["site"], row["status"]) == ("dev-a", "site-a", "degraded")


def test_filters_by_device_site_status_and_time(admin_api, two_sites):
    dev_a, dev_b = two_sites
    now = timezone.now()
    old = HealthCheckFactory(device=dev_a, checked_at=now - datetime.timedelta(days=2))
    bad = HealthCheckFactory(device=dev_a, status="unhealthy", checked_at=now)
    other = HealthCheckFactory(device=dev_b, checked_at=now)
    yesterday = (now - datetime.timedelta(days=1)).isoformat()

    assert ids(admin_api.get(URL, {"device": "dev-a"})) == [bad.pk, old.pk]
    assert ids(admin_api.get(URL, {"site": "site-b"})) == [other.pk]
    assert ids(admin_api.get(URL, {"status": "unhealthy"})) == [bad.pk]
    assert ids(admin_api.get(URL, {"since": yesterday})) == [other.pk, bad.pk]
    assert ids(admin_api.get(URL, {"until": yesterday})) == [old.pk]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"since": "yesterday"}, "since"), ({"until": "2026-13-01"}, "until"), ({"status": "fine"}, "status")],
)
def test_bad_filters_are_a_400_naming_the_field(admin_api, params, field):
    assert_error(admin_api.get(URL, params), 400, field=field)


def test_pages_follow_the_cursor_with_a_bounded_number_of_queries(
    admin_api, two_sites, django_assert_max_num_queries
):
    checks = [HealthCheckFactory(device=two_sites[0]) for _ in range(5)]
    seen, url = [], f"{URL}?page_size=2"
    while url:
        with django_assert_max_num_queries(4):  # token, user's scope, page (+ one spare)
            body = admin_api.get(url).json()
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
    assert seen == [check.pk for check in reversed(checks)]


def test_the_history_is_read_only(admin_api, two_sites):
    check = HealthCheckFactory(device=two_sites[0])
    assert_error(admin_api.post(URL, {"status": "healthy"}, format="json"), 405)
    assert_error(admin_api.delete(f"{URL}/{check.pk}"), 404)


# --- Forward pages read from the newest days when that gives the same rows ---------------------


def utc_midnight(days_ago: int = 0) -> datetime.datetime:
    day = timezone.now().astimezone(datetime.UTC).date() - datetime.timedelta(days=days_ago)
    return datetime.datetime.combine(day, datetime.time(), datetime.UTC)


def write_in_arrival_order(rows) -> None:
    """(device, checked_at) pairs, written in the given order: their ids follow it."""
    from monitoring_app.models import HealthCheck

    history_bulk_create(HealthCheck(device=device, status="healthy", checked_at=at) for device, at in rows)


@pytest.fixture
def history_by_day(two_sites):
    """Per device (two per site): 4 reports 3 to 6 days ago, 4 yesterday, 4 today, written in
    time order (ids follow time, as the ingest's do)."""
    today = timezone.now() - utc_midnight()
    times = [utc_midnight(6 - n) for n in range(4)]
    times += [utc_midnight(1) + datetime.timedelta(hours=5 * n + 1) for n in range(4)]
    times += [utc_midnight() + today * (n + 1) / 5 for n in range(4)]
    devices = (*two_sites, DeviceFactory(site=two_sites[0].site), DeviceFactory(site=two_sites[1].site))
    write_in_arrival_order(sorted(((d, at) for d in devices for at in times), key=lambda row: row[1]))
    return two_sites


def is_history_page(sql: str) -> bool:
    return "ORDER BY" in sql and 'FROM "monitoring_app_healthcheck"' in sql


def walk(client, params: dict) -> tuple[list[int], list[str], list[int]]:
    """Every page forward through `next`, then back through `previous`: the ids forward, each
    page's SQL, and the ids read backwards."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    forward, pages, url, body = [], [], URL, None
    query = {**params, "page_size": 3}
    while url:
        with CaptureQueriesContext(connection) as queries:
            body = client.get(url, query).json()
        forward += [row["id"] for row in body["results"]]
        pages.append([q["sql"] for q in queries.captured_queries if is_history_page(q["sql"])][-1])
        url, query = body["next"], None
    backward, url = [], body["previous"]
    while url:
        body = client.get(url).json()
        backward = [row["id"] for row in body["results"]] + backward
        url = body["previous"]
    return forward, pages, backward


@pytest.mark.parametrize("params", [{}, {"device": "dev-a"}, {"status": "healthy"}, {"site": "site-b"}])
def test_every_page_forward_and_back_is_the_whole_lists_order_by_id(admin_api, history_by_day, params):
    from monitoring_app.models import HealthCheck

    expected = HealthCheck.objects.all()
    if "device" in params:
        expected = expected.filter(device__device_id=params["device"])
    if "site" in params:
        expected = expected.filter(device__site__site_id=params["site"])
    expected = list(expected.order_by("-id").values_list("id", flat=True))

    forward, pages, backward = walk(admin_api, params)

    assert forward == expected
    last_page = len(expected) % 3 or 3
    assert backward == expected[: len(expected) - last_page]
    # The first page came from today's rows alone; the last from the whole history.
    assert '"checked_at" >=' in pages[0]
    assert '"checked_at" >=' not in pages[-1]


def test_a_report_arriving_late_for_an_older_day_keeps_its_place_by_id(history_by_day):
    """Written last (the highest id) but checked three days ago: it is the device's newest
    by id, so the page may not come from today's rows alone."""
    from monitoring_app.models import HealthCheck

    dev_a, _ = history_by_day
    write_in_arrival_order([(dev_a, utc_midnight(3) + datetime.timedelta(hours=7))])
    late = HealthCheck.objects.latest("id")
    membership = SiteMembershipFactory(site=dev_a.site, role="manager")
    expected = list(
        HealthCheck.objects.filter(device__site=dev_a.site).order_by("-id").values_list("id", flat=True)
    )

    forward, pages, _ = walk(token_client(membership.user), {})
    latest = token_client(membership.user).get(URL, {"device": "dev-a", "page_size": 1}).json()["results"]

    assert forward == expected and forward[0] == late.pk
    assert latest[0]["id"] == late.pk
    assert '"checked_at" >=' not in pages[0]  # the proof failed: read as before
