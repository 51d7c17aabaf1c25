"""Device CSV export, through the API and the admin: content, scope, filters, the
formula-injection guard, strict filters, and flat memory (keyset batches)."""

import csv
import io

import pytest
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def rows_of(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def two_sites(db):
    north, south = SiteFactory(site_id="site-north"), SiteFactory(site_id="site-south")
    DeviceFactory(
        site=north, device_id="till-n1", status=DeviceStatus.ONLINE, mac_address="02:AA:00:00:00:01"
    )
    DeviceFactory(site=north, device_id="till-n2", status=DeviceStatus.OFFLINE)
    DeviceFactory(site=south, device_id="till-s1", status=DeviceStatus.ONLINE)
    return north, south


@pytest.fixture
def manager(two_sites):
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=two_sites[0], role=MembershipRole.MANAGER)
    return user


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_api_export_lists_every_device_with_its_columns(admin_api, two_sites, prefix):
    rows = rows_of(admin_api.get(f"{prefix}/devices/export"))

    assert [row["device_id"] for row in rows] == ["till-n1", "till-n2", "till-s1"]
    first = rows[0]
    assert first["site_id"] == "site-north"
    assert first["mac_address"] == "02:AA:00:00:00:01"
    assert first["status"] == "online"
    assert first["device_type"] == "pos_terminal"


def test_api_export_honours_the_list_filters_and_search(admin_api, two_sites):
    assert [r["device_id"] for r in rows_of(admin_api.get("/api/v1/devices/export?status=online"))] == [
        "till-n1",
        "till-s1",
    ]
    assert [r["device_id"] for r in rows_of(admin_api.get("/api/v1/devices/export?site=site-south"))] == [
        "till-s1"
    ]
    assert [r["device_id"] for r in rows_of(admin_api.get("/api/v1/devices/export?search=n2"))] == ["till-n2"]


def test_api_export_refuses_a_bad_filter_before_streaming(admin_api, two_sites):
    assert_error(admin_api.get("/api/v1/devices/export?status=sideways"), 400, field="status")
    assert_error(
        admin_api.get("/api/v1/devices/export?last_seen_after=yesterday"), 400, field="last_seen_after"
    )


def test_api_export_of_a_manager_holds_only_their_sites_rows(manager):
    rows = rows_of(token_client(manager).get("/api/v1/devices/export"))

    assert {row["site_id"] for row in rows} == {"site-north"}
    assert {row["device_id"] for row in rows} == {"till-n1", "till-n2"}
    # Naming another site's devices finds nothing, rather than revealing them.
    assert rows_of(token_client(manager).get("/api/v1/devices/export?site=site-south")) == []


def test_api_export_needs_a_login(api_client, two_sites):
    assert api_client.get("/api/v1/devices/export").status_code == 401


def test_export_guards_against_formula_injection(admin_api, two_sites):
    DeviceFactory(
        site=two_sites[0], device_id="till-evil", name='=HYPERLINK("http://x")', firmware_version="+1"
    )
    DeviceFactory(site=two_sites[0], device_id="till-evil2", name="@SUM(A1)", firmware_version="-2")

    rows = {row["device_id"]: row for row in rows_of(admin_api.get("/api/v1/devices/export"))}

    assert rows["till-evil"]["name"] == '\'=HYPERLINK("http://x")'
    assert rows["till-evil"]["firmware_version"] == "'+1"
    assert rows["till-evil2"]["name"] == "'@SUM(A1)"
    assert rows["till-evil2"]["firmware_version"] == "'-2"


def test_keyset_rows_pages_by_the_key(two_sites, django_assert_num_queries):
    from devices_app.models import Device
    from homepot.csv_export import keyset_rows

    with django_assert_num_queries(2):  # 3 rows in batches of 2: two queries, no OFFSET
        ids = [row[0] for row in keyset_rows(Device.objects.all(), key="id", fields=["device_id"], batch=2)]
    assert ids == ["till-n1", "till-n2", "till-s1"]


# --- Admin ---------------------------------------------------------------------------------


def test_admin_changelist_links_to_the_export_with_its_filters(admin_browser, two_sites):
    changelist = reverse("admin:devices_app_device_changelist")
    page = admin_browser.get(changelist + "?status__exact=online").content.decode()

    assert reverse("admin:devices_app_device_export") + "?status__exact=online" in page
    assert "Export CSV" in page


def test_admin_export_carries_the_changelist_filters_and_search(admin_browser, two_sites):
    url = reverse("admin:devices_app_device_export")

    assert [r["device_id"] for r in rows_of(admin_browser.get(url))] == ["till-n1", "till-n2", "till-s1"]
    assert [r["device_id"] for r in rows_of(admin_browser.get(url + "?status__exact=online"))] == [
        "till-n1",
        "till-s1",
    ]
    # The search of the list (3 characters or more: any part of the device ID).
    assert [r["device_id"] for r in rows_of(admin_browser.get(url + "?q=l-s1"))] == ["till-s1"]


def test_admin_export_refuses_bad_filters(admin_browser, two_sites):
    url = reverse("admin:devices_app_device_export")
    assert admin_browser.get(url + "?no_such_field=1").status_code == 400


def test_admin_export_of_a_manager_holds_only_their_sites(client, manager):
    client.force_login(manager)
    rows = rows_of(client.get(reverse("admin:devices_app_device_export")))

    assert {row["device_id"] for row in rows} == {"till-n1", "till-n2"}


def test_admin_export_needs_view_permission(client, two_sites):
    client.force_login(UserFactory(is_staff=True))
    assert client.get(reverse("admin:devices_app_device_export")).status_code == 403
