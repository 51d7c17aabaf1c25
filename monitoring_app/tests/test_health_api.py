"""GET /api/v1/health-checks: the health history, scoped, filtered, keyset-paged, read-only."""

import datetime

import pytest
from django.utils import timezone

from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from monitoring_app.tests.factories import HealthCheckFactory
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
