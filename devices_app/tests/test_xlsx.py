"""Devices as an Excel workbook (.xlsx): export through the API and the admin (filters and
scope like the CSV), import of a workbook through the API and the admin's Import page (the
same preview, row errors and all-or-nothing apply as a CSV), and an export that imports back
unchanged."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from openpyxl import Workbook, load_workbook

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.csv_export import XLSX_CONTENT_TYPE
from homepot.tests.api_helpers import token_client
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

IMPORT = "/api/v1/devices/import"


def workbook_bytes(rows: list[list]) -> bytes:
    book = Workbook()
    for row in rows:
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def sheet_rows(response) -> list[tuple]:
    body = b"".join(response.streaming_content)
    sheet = load_workbook(io.BytesIO(body), read_only=True).worksheets[0]
    return [tuple("" if v is None else v for v in row) for row in sheet.iter_rows(values_only=True)]


def upload(data: bytes, name="devices.xlsx"):
    return {"file": SimpleUploadedFile(name, data, content_type=XLSX_CONTENT_TYPE)}


@pytest.fixture
def north(db):
    return SiteFactory(site_id="site-north")


def test_api_export_is_a_workbook_of_the_filtered_scoped_list(north):
    south = SiteFactory(site_id="site-south")
    DeviceFactory(site=north, device_id="till-1", name="=SUM(A1)", status="online")
    DeviceFactory(site=north, device_id="till-2", status="offline")
    DeviceFactory(site=south, device_id="till-3", status="online")
    manager = UserFactory()
    SiteMembershipFactory(user=manager, site=north, role=MembershipRole.MANAGER)

    response = token_client(manager).get("/api/v1/devices/export/xlsx?status=online")
    assert response.status_code == 200
    assert response["Content-Type"] == XLSX_CONTENT_TYPE
    assert 'filename="homepot-devices.xlsx"' in response["Content-Disposition"]
    header, *rows = sheet_rows(response)
    assert header[:3] == ("device_id", "name", "device_type")
    assert [row[0] for row in rows] == ["till-1"]  # south's device is out of scope, till-2 filtered
    assert rows[0][1] == "'=SUM(A1)"  # never a formula in the sheet
    bad = token_client(manager).get("/api/v1/devices/export/xlsx?status=melted")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["fields"]


def test_an_exported_workbook_imports_back_unchanged(admin_api, north):
    DeviceFactory.create_batch(3, site=north)
    exported = b"".join(admin_api.get("/api/v1/devices/export/xlsx").streaming_content)

    answer = admin_api.post(f"{IMPORT}?dry_run=false", upload(exported), format="multipart")
    assert answer.status_code == 200, answer.content
    assert (answer.json()["create"], answer.json()["update"], answer.json()["skip"]) == (0, 0, 3)


def test_api_imports_a_workbook_with_the_csv_rules(admin_api, north):
    data = workbook_bytes(
        [
            ["device_id", "name", "site_id", "mac_address", "ip_address"],
            ["till-1", "Till 1", "site-north", "00:1B:44:11:3A:B7", "10.0.0.7"],
            ["till-2", 42, "site-north", None, None],  # a number typed into the name: its text
            [None, None, None, None, None],  # an empty row at the end of a sheet: ignored
        ]
    )
    preview = admin_api.post(IMPORT, upload(data), format="multipart")
    assert preview.status_code == 200, preview.content
    assert (preview.json()["rows"], preview.json()["create"]) == (2, 2)
    assert not Device.objects.exists()

    applied = admin_api.post(f"{IMPORT}?dry_run=false", upload(data), format="multipart")
    assert applied.status_code == 200 and applied.json()["applied"] is True
    assert set(Device.objects.values_list("device_id", "name", "mac_address")) == {
        ("till-1", "Till 1", "00:1B:44:11:3A:B7"),
        ("till-2", "42", None),
    }
    assert AuditLog.objects.filter(event_type="devices.imported").count() == 1


def test_row_errors_and_unreadable_workbooks_answer_400(admin_api, north):
    data = workbook_bytes(
        [
            ["device_id", "name", "site_id"],
            ["till-1", "Till 1", "site-gone"],
            ["till-2", "Till 2", "site-north", "x"],
        ]
    )
    answer = admin_api.post(IMPORT, upload(data), format="multipart")
    assert answer.status_code == 400
    assert [(e["row"], e["field"]) for e in answer.json()["preview"]["errors"]] == [
        (2, "site_id"),
        (3, "file"),
    ]

    broken = admin_api.post(IMPORT, upload(b"PK\x03\x04 not really a zip"), format="multipart")
    assert broken.status_code == 400
    assert broken.json()["error"]["fields"]["file"] == ["The file is not a readable .xlsx workbook."]
    missing = admin_api.post(IMPORT, upload(workbook_bytes([["name"], ["x"]])), format="multipart")
    assert "Missing column(s): device_id, site_id" in missing.json()["error"]["fields"]["file"][0]
    assert not Device.objects.exists()


def test_admin_export_link_and_import_page_take_workbooks(admin_browser, north):
    DeviceFactory(site=north, device_id="till-1", status="online")
    DeviceFactory(site=north, device_id="till-2", status="offline")
    changelist = admin_browser.get("/admin/devices_app/device/?status__exact=online").content.decode()
    assert "/admin/devices_app/device/export/xlsx/?status__exact=online" in changelist

    exported = admin_browser.get("/admin/devices_app/device/export/xlsx/?status__exact=online")
    assert exported.status_code == 200 and exported["Content-Type"] == XLSX_CONTENT_TYPE
    assert [row[0] for row in sheet_rows(exported)[1:]] == ["till-1"]

    data = workbook_bytes([["device_id", "name", "site_id"], ["till-9", "Till 9", "site-north"]])
    preview = admin_browser.post("/admin/devices_app/device/import/", upload(data))
    assert preview.context["preview"]["create"] == 1
    done = admin_browser.post("/admin/devices_app/device/import/", {"token": preview.context["token"]})
    assert done.status_code == 302
    assert Device.objects.filter(device_id="till-9", site=north).exists()
