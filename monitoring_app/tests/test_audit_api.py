import csv
import datetime
import io

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AuditLog
from monitoring_app.services import audit_record
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/audit-logs"


@pytest.fixture
def trail(admin_user):
    a, b = SiteFactory(site_id="site-a"), SiteFactory(site_id="site-b")
    till_a, till_b = DeviceFactory(site=a, device_id="till-a"), DeviceFactory(site=b, device_id="till-b")
    audit_record(
        event_type="site.updated",
        actor=admin_user,
        site=a,
        old_values={"name": "A"},
        new_values={"name": "A2"},
    )
    audit_record(
        event_type="device.updated", actor=admin_user, device=till_a, new_values={"status": "offline"}
    )
    audit_record(
        event_type="device.updated", actor=admin_user, device=till_b, new_values={"status": "online"}
    )
    audit_record(event_type="user.login_failed", description="Failed login for 'mallory'")
    return a, b


@pytest.fixture
def admin_api(admin_user):
    # Session-style authentication: issuing a token would itself add a token.issued row.
    client = APIClient()
    client.force_authenticate(admin_user)
    return client


def _member_client(site, role=MembershipRole.MANAGER):
    user = SiteMembershipFactory(site=site, role=role).user
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_anonymous_gets_401(api_client, trail):
    response = api_client.get(URL)
    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401


def test_admin_sees_the_whole_trail_newest_first(admin_api, trail):
    body = admin_api.get(URL).json()
    assert [row["event_type"] for row in body["results"]] == [
        "user.login_failed",
        "device.updated",
        "device.updated",
        "site.updated",
    ]
    assert body["results"][-1]["old_values"] == {"name": "A"}


@pytest.mark.parametrize("role", [MembershipRole.MANAGER, MembershipRole.VIEWER])
def test_members_see_only_their_sites_history(trail, role):
    client = _member_client(trail[0], role)
    rows = client.get(URL).json()["results"]
    assert {row["site"] for row in rows} == {"site-a"}
    assert len(rows) == 2  # not site B's, not the site-less login failure


def test_a_user_without_any_site_is_refused(trail):
    client = APIClient()
    client.force_authenticate(UserFactory())
    assert client.get(URL).status_code == 403


def test_another_sites_row_is_not_found_for_a_member(trail):
    other = AuditLog.objects.get(device_ref="till-b")
    client = _member_client(trail[0])
    assert client.get(f"{URL}/{other.pk}").status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("event_type=device.updated", 2),
        ("event_type=device.updated&event_type=site.updated", 3),
        ("site=site-a", 2),
        ("device=till-b", 1),
        ("site=nowhere", 0),
    ],
)
def test_filters(admin_api, trail, query, expected):
    assert len(admin_api.get(f"{URL}?{query}").json()["results"]) == expected


def test_time_range_filter(admin_api, trail):
    later = (timezone.now() + datetime.timedelta(minutes=1)).isoformat()
    assert admin_api.get(URL, {"since": later}).json()["results"] == []
    assert len(admin_api.get(URL, {"until": later}).json()["results"]) == 4


def test_bad_filter_values_answer_400_naming_the_parameter(admin_api, trail):
    response = admin_api.get(URL, {"event_type": "site.exploded", "since": "yesterday"})
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"event_type", "since"}


def test_cursor_pages_walk_the_trail_without_gaps(admin_api, admin_user):
    site = SiteFactory()
    for i in range(7):
        audit_record(event_type="site.updated", actor=admin_user, site=site, new_values={"i": i})
    seen, url = [], f"{URL}?page_size=3"
    while url:
        body = admin_api.get(url).json()
        seen += [row["new_values"]["i"] for row in body["results"]]
        url = body["next"]
    assert seen == [6, 5, 4, 3, 2, 1, 0]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_trail_cannot_be_written_through_the_api(admin_api, trail, method):
    row = AuditLog.objects.first()
    url = URL if method == "post" else f"{URL}/{row.pk}"
    assert getattr(admin_api, method)(url, {"description": "edited"}).status_code == 405
    assert AuditLog.objects.count() == 4


def test_csv_export_is_scoped_filtered_and_safe_for_spreadsheets(trail, admin_user):
    audit_record(event_type="site.updated", actor=admin_user, site=trail[0], description='=HYPERLINK("x")')
    client = _member_client(trail[0])

    response = client.get(f"{URL}/export", {"event_type": "site.updated"})

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [row["site"] for row in rows] == ["site-a", "site-a"]
    assert rows[0]["description"] == '\'=HYPERLINK("x")'


def test_list_query_count_does_not_grow_with_rows(admin_api, admin_user, django_assert_max_num_queries):
    site = SiteFactory()
    for _ in range(30):
        audit_record(event_type="site.updated", actor=admin_user, site=site)
    with django_assert_max_num_queries(6):
        assert len(admin_api.get(URL).json()["results"]) == 30
