"""The devices API: the guide's examples, CRUD through the services, filters, cursor pages,
scoping and every kind of bad input."""

import datetime
import json
from base64 import b64encode
from urllib.parse import parse_qs, urlparse

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import GUIDE_SITE, assert_error, token_client
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def guide_device(site_id) -> dict:
    """The body of the guide's "Add devices to the site" example, with its site id."""
    return {
        "device_id": "pos-terminal-009",
        "name": "POS Terminal 9",
        "device_type": "pos_terminal",
        "site_id": site_id,
        "ip_address": "192.168.3.9",
        "mac_address": "00:1B:44:11:3A:B9",
        "config": {"gateway_url": "https://payments.example.com"},
    }


def device_audit_rows():
    return AuditLog.objects.filter(event_type__startswith="device.")


def device_ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [row["device_id"] for row in response.json()["results"]]


@pytest.fixture
def site(db):
    return SiteFactory(site_id="site-003", name="North Branch")


# --- The guide's examples ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_guide_walkthrough_add_a_site_then_its_devices_then_verify(admin_api, prefix):
    created = admin_api.post(f"{prefix}/sites", GUIDE_SITE, format="json")
    assert created.status_code == 201
    site_internal_id = created.json()["id"]  # "replace {site_internal_id} with actual ID"

    response = admin_api.post(f"{prefix}/devices", guide_device(site_internal_id), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["device_id"] == "pos-terminal-009"
    assert body["site_id"] == site_internal_id  # the internal id, as the guide writes it
    assert body["site"] == "site-003"
    assert body["site_name"] == "North Branch"
    assert body["mac_address"] == "00:1B:44:11:3A:B9"
    assert body["config"] == {"gateway_url": "https://payments.example.com"}
    assert body["status"] == "unknown"
    assert isinstance(body["id"], int)

    # "Verify": both lists show the new rows (the guide greps them for site_id / device_id).
    sites = admin_api.get(f"{prefix}/sites").json()["results"]
    assert [(s["site_id"], s["device_count"]) for s in sites] == [("site-003", 1)]
    assert device_ids(admin_api.get(f"{prefix}/devices")) == ["pos-terminal-009"]


def test_site_id_may_be_the_sites_business_id(admin_api, site):
    response = admin_api.post("/devices", guide_device("site-003"), format="json")
    assert response.status_code == 201, response.content
    assert response.json()["site_id"] == site.pk
    assert Device.objects.get().site == site


def test_a_numeric_string_is_a_business_id_first_then_an_internal_id(admin_api, site):
    numbered = SiteFactory(site_id=str(site.pk + 1000))
    by_business_id = admin_api.post("/devices", {**guide_device(numbered.site_id)}, format="json")
    assert by_business_id.json()["site_id"] == numbered.pk
    by_internal_id = admin_api.post(
        "/devices",
        {**guide_device(str(site.pk)), "device_id": "pos-terminal-010", "mac_address": None},
        format="json",
    )
    assert by_internal_id.json()["site_id"] == site.pk


def test_create_writes_exactly_one_audit_row(admin_api, site):
    before = AuditLog.objects.count()

    admin_api.post("/devices", guide_device(site.pk), format="json")

    assert AuditLog.objects.count() == before + 1
    row = device_audit_rows().get()
    assert row.event_type == AuditEvent.DEVICE_CREATED
    assert row.actor == admin_api.user
    assert (row.site_ref, row.device_ref) == ("site-003", "pos-terminal-009")
    assert row.new_values["mac_address"] == "00:1B:44:11:3A:B9"
    assert row.new_values["site"] == site.pk
    assert row.new_values["config"] == {"gateway_url": "https://payments.example.com"}


# --- Read, update, delete ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/devices/pos-1", "/devices/pos-1/", "/api/v1/devices/pos-1"])
def test_retrieve_by_business_id(admin_api, site, path):
    DeviceFactory(device_id="pos-1", site=site, name="Till 1")
    response = admin_api.get(path)
    assert response.status_code == 200
    assert response.json()["name"] == "Till 1"
    assert response.json()["site"] == "site-003"


def test_retrieve_unknown_device_is_a_json_404(admin_api):
    assert_error(admin_api.get("/devices/nope"), 404, code="not_found")
    assert_error(admin_api.get("/devices/a%00b"), 404)


def test_put_replaces_fields_and_audits_only_what_changed(admin_api, site):
    DeviceFactory(
        device_id="pos-1", site=site, name="Till 1", status=DeviceStatus.ONLINE, firmware_version="4.2.1"
    )
    body = {
        "device_id": "pos-1",
        "name": "Till 1",
        "site_id": site.pk,
        "status": "maintenance",
        "firmware_version": "4.3.0",
    }

    response = admin_api.put("/devices/pos-1", body, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "maintenance"
    row = device_audit_rows().get()
    assert row.event_type == AuditEvent.DEVICE_UPDATED
    assert row.old_values == {"status": "online", "firmware_version": "4.2.1"}
    assert row.new_values == {"status": "maintenance", "firmware_version": "4.3.0"}


def test_put_requires_the_required_fields(admin_api, site):
    DeviceFactory(device_id="pos-1", site=site)
    error = assert_error(admin_api.put("/devices/pos-1", {"name": "Till"}, format="json"), 400)
    assert {"device_id", "site_id"} <= set(error["fields"])


def test_patch_moves_a_device_between_sites_and_audits_it(admin_api, site):
    other = SiteFactory(site_id="site-004")
    DeviceFactory(device_id="pos-1", site=site)

    response = admin_api.patch("/devices/pos-1", {"site_id": "site-004"}, format="json")

    assert response.status_code == 200
    assert (response.json()["site_id"], response.json()["site"]) == (other.pk, "site-004")
    row = device_audit_rows().get()
    assert (row.old_values, row.new_values) == ({"site": site.pk}, {"site": other.pk})


def test_patch_with_unchanged_values_records_nothing(admin_api, site):
    DeviceFactory(device_id="pos-1", site=site, mac_address="00:1B:44:11:3A:B9")
    response = admin_api.patch("/devices/pos-1", {"mac_address": "001b.4411.3ab9"}, format="json")
    assert response.status_code == 200
    assert not device_audit_rows().exists()


def test_patch_can_clear_ip_and_mac(admin_api, site):
    DeviceFactory(device_id="pos-1", site=site)
    response = admin_api.patch("/devices/pos-1", {"ip_address": "", "mac_address": None}, format="json")
    assert response.status_code == 200
    device = Device.objects.get()
    assert (device.ip_address, device.mac_address) == (None, None)


def test_last_seen_is_read_only(admin_api, site):
    DeviceFactory(device_id="pos-1", site=site, last_seen=None)
    admin_api.patch("/devices/pos-1", {"last_seen": "2030-01-01T00:00:00Z"}, format="json")
    assert Device.objects.get().last_seen is None


def test_delete_a_device(admin_api, site):
    device = DeviceFactory(device_id="pos-1", site=site)

    response = admin_api.delete("/devices/pos-1")

    assert response.status_code == 204
    assert not Device.objects.filter(pk=device.pk).exists()
    row = device_audit_rows().get()
    assert row.event_type == AuditEvent.DEVICE_DELETED
    assert row.device_ref == "pos-1"
    assert row.old_values["device_id"] == "pos-1"


# --- MAC and IP addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    ["00:1B:44:11:3A:B9", "00:1b:44:11:3a:b9", "00-1B-44-11-3A-B9", "001b.4411.3ab9", "001B44113AB9"],
)
def test_mac_is_accepted_in_common_spellings_and_stored_canonical(admin_api, site, spelling):
    response = admin_api.post("/devices", {**guide_device(site.pk), "mac_address": spelling}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["mac_address"] == "00:1B:44:11:3A:B9"
    assert Device.objects.get().mac_address == "00:1B:44:11:3A:B9"


def test_a_mac_already_in_use_in_another_spelling_is_a_409(admin_api, site):
    DeviceFactory(site=site, mac_address="00:1B:44:11:3A:B9")
    before = AuditLog.objects.count()
    response = admin_api.post(
        "/devices", {**guide_device(site.pk), "mac_address": "001b44113ab9"}, format="json"
    )
    assert_error(response, 409, field="mac_address", code="duplicate")
    assert Device.objects.count() == 1
    assert AuditLog.objects.count() == before


def test_ip_v6_is_accepted_and_missing_ip_and_mac_are_null(admin_api, site):
    body = {**guide_device(site.pk), "ip_address": "2001:db8::1"}
    assert admin_api.post("/devices", body, format="json").json()["ip_address"] == "2001:db8::1"
    bare = {"device_id": "pos-2", "name": "Till 2", "site_id": site.pk}
    created = admin_api.post("/devices", bare, format="json").json()
    assert (created["ip_address"], created["mac_address"], created["config"]) == (None, None, {})


# --- Bad input: the status, the error shape, the field, and nothing stored -------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"mac_address": "00:1B:44:11:3A"}, "mac_address"),
        ({"mac_address": "00:1B:44:11:3A:ZZ"}, "mac_address"),
        ({"mac_address": "00:1B-44:11:3A:B9"}, "mac_address"),
        ({"mac_address": 1234}, "mac_address"),
        ({"ip_address": "192.168.3.999"}, "ip_address"),
        ({"ip_address": "not-an-ip"}, "ip_address"),
        ({"ip_address": 3232236297}, "ip_address"),
        ({"site_id": 999999}, "site_id"),
        ({"site_id": "site-999"}, "site_id"),
        ({"site_id": 10**30}, "site_id"),
        ({"site_id": -1}, "site_id"),
        ({"site_id": True}, "site_id"),
        ({"site_id": 3.5}, "site_id"),
        ({"site_id": [3]}, "site_id"),
        ({"site_id": None}, "site_id"),
        ({"config": "gateway_url=https://payments.example.com"}, "config"),
        ({"config": ["a", "b"]}, "config"),
        ({"config": {"k": "a\x00b"}}, "config"),
        ({"name": 9}, "name"),
        ({"name": ["POS", "Terminal"]}, "name"),
        ({"name": None}, "name"),
        ({"device_id": "pos terminal 9"}, "device_id"),
        ({"device_id": 9}, "device_id"),
        ({"device_type": "toaster"}, "device_type"),
        ({"device_type": 1}, "device_type"),
        ({"status": "bogus"}, "status"),
        ({"firmware_version": 4.2}, "firmware_version"),
    ],
)
def test_bad_values_are_a_400_naming_the_field_and_store_nothing(admin_api, site, changes, field):
    before = AuditLog.objects.count()

    response = admin_api.post("/devices", {**guide_device(site.pk), **changes}, format="json")

    assert_error(response, 400, field=field)
    assert not Device.objects.exists()
    assert AuditLog.objects.count() == before


def test_unknown_site_message_names_the_site(admin_api):
    error = assert_error(admin_api.post("/devices", guide_device("site-999"), format="json"), 400, "site_id")
    assert error["fields"]["site_id"] == ["Unknown site 'site-999'."]


@pytest.mark.parametrize(
    "config",
    [
        '{"ratio": 1e400}',  # parses to infinity, which jsonb cannot store
        '{"k": "\\ud800"}',  # an unpaired surrogate
        '{"\\u0000": 1}',  # NUL in a key
        '{"deep": ' + "[" * 50 + '"a\\u0000b"' + "]" * 50 + "}",
    ],
)
def test_config_values_jsonb_cannot_store_are_a_400(admin_api, site, config):
    body = json.dumps(guide_device(site.pk))[:-1] + f', "config": {config}}}'
    assert_error(admin_api.post("/devices", body, content_type="application/json"), 400, field="config")
    assert not Device.objects.exists()


def test_duplicate_device_id_is_a_409_naming_device_id(admin_api, site):
    DeviceFactory(device_id="pos-terminal-009", site=site)
    before = AuditLog.objects.count()
    body = {**guide_device(site.pk), "mac_address": None}

    assert_error(admin_api.post("/devices", body, format="json"), 409, field="device_id", code="duplicate")

    assert Device.objects.count() == 1
    assert AuditLog.objects.count() == before


def test_several_bad_fields_are_reported_together(admin_api, site):
    DeviceFactory(device_id="pos-terminal-009", site=site)
    body = {**guide_device("site-999"), "mac_address": "zz", "ip_address": "1.2.3"}
    error = assert_error(admin_api.post("/devices", body, format="json"), 400)
    assert {"device_id", "site_id", "mac_address", "ip_address"} <= set(error["fields"])


def test_oversized_body_is_a_413_and_stores_nothing(admin_api, site, settings):
    body = {**guide_device(site.pk), "config": {"blob": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)}}
    assert_error(admin_api.post("/devices", body, format="json"), 413, code="payload_too_large")
    assert not Device.objects.exists()


def test_malformed_json_is_a_400(admin_api, site):
    response = admin_api.post("/devices", '{"device_id": "pos-1", ', content_type="application/json")
    assert_error(response, 400, code="parse_error")


def test_bad_patch_changes_nothing(admin_api, site):
    DeviceFactory(device_id="pos-1", site=site, name="Till 1", mac_address="00:1B:44:11:3A:B9")
    response = admin_api.patch("/devices/pos-1", {"name": "Till One", "mac_address": "bad"}, format="json")
    assert_error(response, 400, field="mac_address")
    device = Device.objects.get()
    assert (device.name, device.mac_address) == ("Till 1", "00:1B:44:11:3A:B9")
    assert not device_audit_rows().exists()


# --- Filters and search -----------------------------------------------------------------------------


@pytest.fixture
def fleet(db):
    north, south = SiteFactory(site_id="site-101"), SiteFactory(site_id="site-102")
    now = timezone.now()
    DeviceFactory(
        device_id="n-pos-1",
        name="Front Till",
        site=north,
        status=DeviceStatus.ONLINE,
        ip_address="10.1.0.1",
        mac_address="02:00:00:00:00:01",
        last_seen=now,
    )
    DeviceFactory(
        device_id="n-pos-2",
        name="Back Till",
        site=north,
        status=DeviceStatus.OFFLINE,
        firmware_version="4.1.0",
        last_seen=now - datetime.timedelta(days=2),
    )
    DeviceFactory(
        device_id="n-reader-1",
        name="Card Reader",
        site=north,
        device_type=DeviceType.CARD_READER,
        status=DeviceStatus.ONLINE,
        last_seen=None,
    )
    DeviceFactory(
        device_id="s-pos-1",
        name="Front Till",
        site=south,
        status=DeviceStatus.OFFLINE,
        ip_address="10.2.0.1",
        last_seen=now - datetime.timedelta(hours=1),
    )
    return {"north": north, "south": south, "now": now}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("site=site-101", ["n-pos-1", "n-pos-2", "n-reader-1"]),
        ("site_id=site-102", ["s-pos-1"]),
        ("site=site-999", []),
        ("device_type=card_reader", ["n-reader-1"]),
        ("status=offline", ["n-pos-2", "s-pos-1"]),
        ("site=site-101&status=offline", ["n-pos-2"]),
        ("site=site-101&device_type=pos_terminal", ["n-pos-1", "n-pos-2"]),
        ("firmware_version=4.1.0", ["n-pos-2"]),
        ("search=front", ["n-pos-1", "s-pos-1"]),
        ("search=n-reader", ["n-reader-1"]),
        ("search=02:00:00:00:00:01", ["n-pos-1"]),
        ("search=10.2.0", ["s-pos-1"]),
        ("search=front+site", []),
        ("ordering=-device_id", ["s-pos-1", "n-reader-1", "n-pos-2", "n-pos-1"]),
    ],
)
def test_filters_search_and_ordering(admin_api, fleet, query, expected):
    result = device_ids(admin_api.get(f"/devices?{query}"))
    assert sorted(result) == sorted(expected)
    if "ordering" in query:
        assert result == expected


def test_a_page_without_filters_is_the_page_with_every_filter_empty(admin_api, fleet):
    # Without a filter parameter the filter set is not built at all (homepot.api.filters).
    empty = "site=&site_id=&device_type=&status=&firmware_version=&last_seen_after=&last_seen_before="
    assert admin_api.get("/devices").json() == admin_api.get(f"/devices?{empty}").json()


def test_each_row_of_a_page_is_what_the_device_answers_alone(admin_api, fleet):
    # A page reads only the columns it shows (selectors.device_page); a device alone, all of them.
    rows = admin_api.get("/devices?page_size=500").json()["results"]
    assert len(rows) == 4
    for row in rows:
        assert row == admin_api.get(f"/devices/{row['device_id']}").json()


def test_filter_by_the_sites_internal_id(admin_api, fleet):
    north = fleet["north"]
    assert sorted(device_ids(admin_api.get(f"/devices?site={north.pk}"))) == [
        "n-pos-1",
        "n-pos-2",
        "n-reader-1",
    ]


def test_filter_by_last_seen(admin_api, fleet):
    since = (fleet["now"] - datetime.timedelta(hours=2)).isoformat()
    assert sorted(device_ids(admin_api.get("/devices", {"last_seen_after": since}))) == ["n-pos-1", "s-pos-1"]
    assert device_ids(admin_api.get("/devices", {"last_seen_before": since})) == ["n-pos-2"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("status=bogus", "status"),
        ("device_type=toaster", "device_type"),
        ("last_seen_after=yesterday", "last_seen_after"),
        ("last_seen_before=2026-13-45", "last_seen_before"),
        ("site=a%00b", "site"),
        ("search=a%00b", "search"),
        ("ordering=name", "ordering"),
        ("ordering=created_at", "ordering"),
        ("ordering=last_seen", "ordering"),
    ],
)
def test_an_invalid_query_parameter_is_a_400_naming_it(admin_api, fleet, query, parameter):
    assert_error(admin_api.get(f"/devices?{query}"), 400, field=parameter)


# --- Cursor pagination -------------------------------------------------------------------------------


def walk(client, url) -> list[str]:
    seen = []
    while url:
        body = client.get(url).json()
        assert "count" not in body  # keyset pages never count the fleet
        seen += [row["device_id"] for row in body["results"]]
        url = body["next"]
    return seen


@pytest.mark.parametrize("ordering", ["id", "-id", "device_id", "-device_id"])
def test_cursor_pages_walk_every_device_once(admin_api, site, ordering):
    devices = DeviceFactory.create_batch(23, site=site)

    seen = walk(admin_api, f"/devices?page_size=5&ordering={ordering}")

    assert len(seen) == 23
    assert set(seen) == {d.device_id for d in devices}
    key = (
        (lambda d: d.pk) if ordering.endswith("id") and "device" not in ordering else (lambda d: d.device_id)
    )
    expected = [d.device_id for d in sorted(devices, key=key, reverse=ordering.startswith("-"))]
    assert seen == expected


def test_cursor_pages_stay_exact_when_devices_are_added_while_walking(admin_api, site):
    DeviceFactory.create_batch(10, site=site)
    first = admin_api.get("/devices?page_size=4").json()
    DeviceFactory.create_batch(3, site=site)  # appended after the cursor: seen on later pages

    seen = [row["device_id"] for row in first["results"]] + walk(admin_api, first["next"])

    assert len(seen) == len(set(seen)) == 13


def test_previous_link_returns_the_earlier_page(admin_api, site):
    DeviceFactory.create_batch(6, site=site)
    first = admin_api.get("/devices?page_size=3").json()
    second = admin_api.get(first["next"]).json()
    assert admin_api.get(second["previous"]).json()["results"] == first["results"]


def test_a_filtered_walk_keeps_its_filter(admin_api, site):
    other = SiteFactory()
    DeviceFactory.create_batch(7, site=site, status=DeviceStatus.OFFLINE)
    DeviceFactory.create_batch(5, site=site, status=DeviceStatus.ONLINE)
    DeviceFactory.create_batch(5, site=other, status=DeviceStatus.OFFLINE)
    assert len(walk(admin_api, "/devices?page_size=2&site=site-003&status=offline")) == 7


def cursor_for(position: str) -> str:
    return b64encode(f"p={position}".encode()).decode()


@pytest.mark.parametrize("cursor", ["garbage!", cursor_for("abc"), cursor_for("a%00b"), "cD0xJm89LTE="])
def test_a_tampered_cursor_is_a_404_not_a_server_error(admin_api, site, cursor):
    DeviceFactory(site=site)
    assert_error(admin_api.get("/devices", {"cursor": cursor}), 404)


def test_page_size_is_capped(admin_api, site):
    DeviceFactory.create_batch(3, site=site)
    assert len(admin_api.get("/devices?page_size=100000").json()["results"]) == 3


def test_list_query_count_is_independent_of_page_size_and_fleet_size(
    admin_api, django_assert_max_num_queries
):
    for site in SiteFactory.create_batch(5):
        DeviceFactory.create_batch(12, site=site)

    admin_api.get("/devices")  # the token's first use records it (one write, then once a minute)
    counts = []
    for page_size in (5, 50):
        with CaptureQueriesContext(connection) as ctx:
            response = admin_api.get(f"/devices?page_size={page_size}")
        assert len(response.json()["results"]) == page_size
        counts.append(len(ctx))
    assert counts[0] == counts[1]

    # token lookup + one page query (the site filter is a subquery of the same query)
    with django_assert_max_num_queries(3):
        admin_api.get("/devices?page_size=50&site=site-100&status=online")


def test_scoped_list_query_count_is_bounded(manager, django_assert_max_num_queries):
    DeviceFactory.create_batch(20, site=manager.sites["a"])
    # token lookup, the user's permissions (user + group), one page query
    with django_assert_max_num_queries(5):
        response = manager.get("/devices?page_size=50")
    assert len(response.json()["results"]) == 20


# --- Authentication and scoping ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/devices"),
        ("post", "/devices"),
        ("get", "/devices/pos-1"),
        ("put", "/devices/pos-1"),
        ("patch", "/devices/pos-1"),
        ("delete", "/devices/pos-1"),
        ("get", "/api/v1/devices/"),
        ("post", "/api/v1/devices"),
        ("patch", "/api/v1/devices/pos-1"),
    ],
)
def test_anonymous_requests_get_401(api_client, site, method, path):
    DeviceFactory(device_id="pos-1", site=site, name="Till 1")
    response = getattr(api_client, method)(path, guide_device(site.pk), format="json")
    assert_error(response, 401)
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert list(Device.objects.values_list("device_id", "name")) == [("pos-1", "Till 1")]


def test_a_bad_token_is_a_401(api_client):
    api_client.credentials(HTTP_AUTHORIZATION="Bearer hp_not-a-real-token")
    assert_error(api_client.get("/devices"), 401)


@pytest.fixture
def manager(db):
    """A non-admin with device model permissions: manager of site A, viewer of C, nothing on B."""
    user = UserFactory()
    user.user_permissions.add(
        *Permission.objects.filter(
            content_type__app_label="devices_app",
            codename__in=["view_device", "add_device", "change_device", "delete_device"],
        )
    )
    sites = {
        "a": SiteFactory(site_id="site-a"),
        "b": SiteFactory(site_id="site-b"),
        "c": SiteFactory(site_id="site-c"),
    }
    SiteMembershipFactory(user=user, site=sites["a"], role=MembershipRole.MANAGER)
    SiteMembershipFactory(user=user, site=sites["c"], role=MembershipRole.VIEWER)
    client = token_client(user)
    client.sites = sites
    return client


def test_a_member_sees_only_devices_of_their_sites(manager):
    DeviceFactory(device_id="a-1", site=manager.sites["a"])
    DeviceFactory(device_id="b-1", site=manager.sites["b"])
    DeviceFactory(device_id="c-1", site=manager.sites["c"])

    assert sorted(device_ids(manager.get("/devices"))) == ["a-1", "c-1"]
    assert device_ids(manager.get("/devices?site=site-b")) == []
    assert device_ids(manager.get("/devices?search=b-1")) == []


def test_another_operators_device_is_a_404_for_every_verb(manager):
    DeviceFactory(device_id="b-1", site=manager.sites["b"], name="Bravo Till")
    for method in ("get", "put", "patch", "delete"):
        response = getattr(manager, method)("/devices/b-1", {"name": "Mine now"}, format="json")
        assert_error(response, 404)
    assert Device.objects.get().name == "Bravo Till"


def test_a_manager_registers_a_device_on_their_site(manager):
    response = manager.post("/devices", guide_device("site-a"), format="json")
    assert response.status_code == 201
    assert device_audit_rows().get().actor == manager.user


@pytest.mark.parametrize("site_key", ["b", "c"])
def test_creating_a_device_on_a_site_one_may_not_change_is_an_unknown_site(manager, site_key):
    target = manager.sites[site_key]
    for reference in (target.site_id, target.pk):
        response = manager.post("/devices", guide_device(reference), format="json")
        error = assert_error(response, 400, field="site_id")
        assert "Unknown site" in error["fields"]["site_id"][0]
    assert not Device.objects.exists()
    assert not device_audit_rows().exists()


def test_a_device_cannot_be_moved_out_of_scope(manager):
    DeviceFactory(device_id="a-1", site=manager.sites["a"])
    for reference in ("site-b", manager.sites["b"].pk, "site-c"):
        response = manager.patch("/devices/a-1", {"site_id": reference}, format="json")
        assert_error(response, 400, field="site_id")
    assert Device.objects.get().site == manager.sites["a"]
    assert not device_audit_rows().exists()


def test_a_viewer_sees_but_cannot_change_or_delete(manager):
    DeviceFactory(device_id="c-1", site=manager.sites["c"], name="Charlie Till")
    assert manager.get("/devices/c-1").status_code == 200
    assert_error(manager.patch("/devices/c-1", {"name": "Mine"}, format="json"), 403)
    assert_error(manager.delete("/devices/c-1"), 403)
    assert Device.objects.get().name == "Charlie Till"


def test_a_user_without_any_site_gets_403(db):
    DeviceFactory(site=SiteFactory(site_id="site-a"))
    assert_error(token_client(UserFactory()).get("/devices"), 403)


def test_a_viewer_cannot_delete(db):
    user = UserFactory()
    site = SiteFactory(site_id="site-a")
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.VIEWER)
    DeviceFactory(device_id="a-1", site=site)
    assert_error(token_client(user).delete("/devices/a-1"), 403)
    assert Device.objects.exists()


def test_next_links_keep_the_callers_query(admin_api, site):
    DeviceFactory.create_batch(3, site=site, status=DeviceStatus.OFFLINE)
    body = admin_api.get("/devices?page_size=1&status=offline").json()
    query = parse_qs(urlparse(body["next"]).query)
    assert query["status"] == ["offline"] and query["page_size"] == ["1"] and query["cursor"]


def test_a_viewer_is_refused_before_the_body_is_validated(manager):
    # 403 (not allowed here) rather than 400 (the site "is unknown" to the change scope).
    DeviceFactory(device_id="c-1", site=manager.sites["c"])
    assert_error(manager.patch("/devices/c-1", {"site_id": "site-c"}, format="json"), 403)


def test_a_failure_after_the_service_ran_leaves_nothing_behind(admin_api, site, monkeypatch):
    from devices_app.api.views import DeviceViewSet

    def broken_answer(self, obj):
        raise RuntimeError("the answer could not be built")

    monkeypatch.setattr(DeviceViewSet, "_fresh", broken_answer)
    before = AuditLog.objects.count()
    with pytest.raises(RuntimeError):
        admin_api.post("/devices", guide_device(site.pk), format="json")
    assert not Device.objects.exists()
    assert AuditLog.objects.count() == before


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ip_address": None, "mac_address": None, "last_seen": None, "config": {}},
        {"ip_address": "2001:db8::1", "config": {"a": [1, {"b": None}], "c": "ü"}},
        {"status": DeviceStatus.MAINTENANCE, "firmware_version": "", "push_channel": "mqtt"},
        # Times written by PostgreSQL (UtcIsoText): whole seconds have no fraction; a small
        # fraction keeps its leading zeros.
        {"last_seen": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)},
        {"last_seen": datetime.datetime(1999, 12, 31, 23, 59, 59, 7, tzinfo=datetime.UTC)},
    ],
)
def test_the_written_out_representation_is_what_drf_would_answer(admin_api, site, values):
    """DeviceSerializer.to_representation writes its columns out for speed; it must answer
    exactly what DRF's generic field loop answers, through the list and the detail."""
    from rest_framework import serializers as drf

    from devices_app.api.serializers import DeviceSerializer

    defaults = {"ip_address": "10.1.2.3", "mac_address": "00:1B:44:11:3A:B9", "last_seen": timezone.now()}
    device = DeviceFactory(site=site, **{**defaults, **values})
    fresh = Device.objects.select_related("site").get(pk=device.pk)
    serializer = DeviceSerializer()

    generic = drf.ModelSerializer.to_representation(serializer, fresh)

    assert serializer.to_representation(fresh) == generic
    assert list(serializer.to_representation(fresh)) == list(generic)  # same key order
    listed = admin_api.get("/api/v1/devices").json()["results"]
    assert listed == [json.loads(json.dumps(generic))]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Paris", "America/St_Johns"])
def test_the_list_writes_times_as_drf_does_in_any_current_time_zone(admin_api, site, zone):
    """In UTC the list's times are PostgreSQL's text (UtcIsoText); in another zone (none is
    activated today, but nothing forbids it) they are formatted in Python: both as DRF."""
    from rest_framework import serializers as drf

    from devices_app.api.serializers import DeviceSerializer

    times = [
        datetime.datetime(2026, 7, 1, 12, 0, 0, tzinfo=datetime.UTC),
        datetime.datetime(2026, 1, 1, 0, 0, 0, 500, tzinfo=datetime.UTC),
    ]
    for i, last_seen in enumerate(times):
        DeviceFactory(site=site, device_id=f"zone-{i}", last_seen=last_seen)
    with timezone.override(zone):
        listed = admin_api.get("/api/v1/devices").json()["results"]
        fresh = Device.objects.select_related("site").order_by("id")
        generic = [drf.ModelSerializer.to_representation(DeviceSerializer(), d) for d in fresh]
    assert listed == json.loads(json.dumps(generic))
    assert {row["last_seen"] for row in listed} >= (
        {"2026-07-01T12:00:00Z", "2026-01-01T00:00:00.000500Z"} if zone == "UTC" else set()
    )
