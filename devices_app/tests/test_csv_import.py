"""Device CSV import through the API: preview counts, per-row errors, all-or-nothing apply,
one audit row, a manager's scope, and an export that imports back unchanged."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

HEADER = "device_id,name,site_id,device_type,ip_address,mac_address,firmware_version\n"
URL = "/api/v1/devices/import"


@pytest.fixture
def north(db):
    return SiteFactory(site_id="site-north")


@pytest.fixture
def south(db):
    return SiteFactory(site_id="site-south")


@pytest.fixture
def existing(north):
    return DeviceFactory(
        site=north,
        device_id="till-1",
        name="Till 1",
        ip_address="10.9.0.1",
        mac_address="02:BB:00:00:00:01",
        firmware_version="4.2.1",
    )


def post_csv(client, text: str, dry_run: str | None = None, multipart: bool = False):
    url = URL if dry_run is None else f"{URL}?dry_run={dry_run}"
    if multipart:
        upload = SimpleUploadedFile("devices.csv", text.encode(), content_type="text/csv")
        return client.post(url, {"file": upload}, format="multipart")
    return client.generic("POST", url, text.encode(), content_type="text/csv")


GOOD = (
    HEADER
    + "till-1,Till 1,site-north,pos_terminal,10.9.0.1,02:BB:00:00:00:01,4.2.1\n"  # unchanged: skip
    + "till-2,Till 2,site-north,card_reader,10.9.0.2,02-bb-00-00-00-02,2.8.3\n"  # new
    + "till-3,Till 3,site-south,,,,\n"  # new, defaults
)


def test_preview_counts_and_writes_nothing(admin_api, existing, south):
    response = post_csv(admin_api, GOOD + "till-1b,Till 1b,site-north,,,,\n", dry_run="true")

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["rows"], body["create"], body["update"], body["skip"]) == (4, 3, 0, 1)
    assert body["errors"] == [] and body["applied"] is False
    assert [o["action"] for o in body["outcomes"]] == ["skip", "create", "create", "create"]
    assert Device.objects.count() == 1
    assert not AuditLog.objects.filter(event_type="devices.imported").exists()


def test_dry_run_is_the_default(admin_api, existing, south):
    assert post_csv(admin_api, GOOD).json()["applied"] is False
    assert Device.objects.count() == 1


@pytest.mark.parametrize("multipart", [False, True])
def test_apply_creates_updates_and_audits_once(admin_api, existing, south, multipart):
    text = GOOD.replace("till-1,Till 1,", "till-1,Till One,")
    response = post_csv(admin_api, text, dry_run="false", multipart=multipart)

    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["create"], body["update"], body["skip"], body["applied"]) == (2, 1, 0, True)
    existing.refresh_from_db()
    assert existing.name == "Till One"
    two = Device.objects.get(device_id="till-2")
    assert (two.mac_address, two.device_type, two.site.site_id) == (
        "02:BB:00:00:00:02",
        "card_reader",
        "site-north",
    )
    three = Device.objects.get(device_id="till-3")
    assert (three.device_type, three.mac_address, three.status, three.config) == (
        "pos_terminal",
        None,
        "unknown",
        {},
    )
    audit = AuditLog.objects.get(event_type="devices.imported")
    assert audit.new_values == {"rows": 3, "created": 2, "updated": 1, "skipped": 0}
    assert audit.actor_id == admin_api.user.pk


def test_importing_the_same_file_again_changes_nothing(admin_api, existing, south):
    post_csv(admin_api, GOOD, dry_run="false")
    again = post_csv(admin_api, GOOD, dry_run="false").json()
    assert (again["create"], again["update"], again["skip"]) == (0, 0, 3)


def test_row_errors_name_row_field_and_reason_and_nothing_is_written(admin_api, existing, south):
    text = (
        HEADER
        + "till-5,Till 5,site-north,,,not-a-mac,\n"
        + "till-6,Till 6,site-nowhere,,,,\n"
        + "till-7,Till 7,site-north,,,,\n"
        + "till-7,Till 7 again,site-north,,,,\n"
        + "till-8,Till 8,site-north,,,02:BB:00:00:00:01,\n"  # till-1's MAC
        + "bad id!,,site-north,toaster,999.1.1.1,,\n"
    )
    response = post_csv(admin_api, text, dry_run="false")

    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"]["code"] == "import_rejected"
    errors = {(e["row"], e["field"]) for e in body["preview"]["errors"]}
    assert errors == {
        (2, "mac_address"),
        (3, "site_id"),
        (5, "device_id"),
        (6, "mac_address"),
        (7, "device_id"),
        (7, "name"),
        (7, "device_type"),
        (7, "ip_address"),
    }
    assert "row 4" in next(e["message"] for e in body["preview"]["errors"] if e["row"] == 5)
    assert Device.objects.count() == 1  # till-7 (valid) was not written either
    assert not AuditLog.objects.filter(event_type="devices.imported").exists()


def test_a_dry_run_with_errors_answers_400_too(admin_api, north):
    response = post_csv(admin_api, HEADER + "till-9,Till 9,site-nowhere,,,,\n", dry_run="true")
    assert response.status_code == 400
    assert response.json()["preview"]["error_count"] == 1


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("device_id,name\nx,y\n", "file"),  # site_id missing
        ("device_id,name,site_id,colour\n", "file"),
        (b"\xff\xfe", "file"),
    ],
)
def test_an_unreadable_file_is_a_400_naming_it(admin_api, text, field):
    body = text if isinstance(text, bytes) else text.encode()
    response = admin_api.generic("POST", URL, body, content_type="text/csv")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_a_bad_dry_run_value_and_a_missing_file_are_400(admin_api):
    assert "dry_run" in post_csv(admin_api, HEADER, dry_run="maybe").json()["error"]["fields"]
    response = admin_api.post(URL, {}, format="multipart")
    assert response.status_code == 400 and "file" in response.json()["error"]["fields"]


def test_manager_imports_only_rows_of_their_sites(existing, south):
    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=existing.site, role=MembershipRole.MANAGER)
    DeviceFactory(site=south, device_id="till-south")
    client = token_client(manager)

    text = HEADER + "till-4,Till 4,site-north,,,,\n" + "till-x,Till X,site-south,,,,\n"
    refused = post_csv(client, text, dry_run="false")
    assert refused.status_code == 400
    assert [(e["row"], e["field"]) for e in refused.json()["preview"]["errors"]] == [(3, "site_id")]
    # Moving another site's device into theirs is refused too (it is not theirs to change).
    stolen = post_csv(client, HEADER + "till-south,Mine now,site-north,,,,\n", dry_run="false")
    assert [(e["row"], e["field"]) for e in stolen.json()["preview"]["errors"]] == [(2, "device_id")]

    ok = post_csv(client, HEADER + "till-4,Till 4,site-north,,,,\n", dry_run="false")
    assert ok.status_code == 200 and ok.json()["create"] == 1
    audit = AuditLog.objects.get(event_type="devices.imported")
    assert audit.site_id == existing.site_id  # the manager sees their own import in the trail


def test_a_viewer_may_not_import(north):
    viewer = UserFactory()
    SiteMembershipFactory(user=viewer, site=north, role=MembershipRole.VIEWER)
    assert post_csv(token_client(viewer), HEADER + "till-4,Till 4,site-north,,,,\n").status_code == 403


def test_an_export_imports_back_unchanged(admin_api, existing, south):
    DeviceFactory(site=south, device_id="till-eq", name="=SUM(A1)")
    exported = b"".join(admin_api.get("/api/v1/devices/export").streaming_content).decode()

    body = post_csv(admin_api, exported, dry_run="true").json()
    assert (body["create"], body["update"], body["skip"]) == (0, 0, 2)


def test_the_import_has_its_own_size_limit_not_the_json_one(admin_api, north, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 50  # the JSON bound does not apply to a CSV file
    text = HEADER + "".join(f"till-{n},Till {n},site-north,,,,\n" for n in range(10))
    assert post_csv(admin_api, text).json()["create"] == 10

    settings.HOMEPOT_IMPORT_MAX_BYTES = 100
    assert post_csv(admin_api, text).status_code == 413
    assert post_csv(admin_api, text, multipart=True).status_code == 413
