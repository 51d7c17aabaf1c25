"""Sites as an Excel workbook: the export (API and admin) imports back unchanged, and a
workbook imports with the CSV's rules (administrators only)."""

import io

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from openpyxl import Workbook

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from homepot.csv_export import XLSX_CONTENT_TYPE
from homepot.tests.api_helpers import token_client
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

IMPORT = "/api/v1/sites/import"


def upload(data: bytes):
    return {"file": SimpleUploadedFile("sites.xlsx", data, content_type=XLSX_CONTENT_TYPE)}


def test_an_exported_workbook_imports_back_unchanged(admin_api, admin_browser):
    SiteFactory.create_batch(3)
    for url in ("/api/v1/sites/export/xlsx", "/admin/sites_app/site/export/xlsx/"):
        client = admin_api if url.startswith("/api") else admin_browser
        exported = client.get(url)
        assert exported.status_code == 200 and exported["Content-Type"] == XLSX_CONTENT_TYPE
        data = b"".join(exported.streaming_content)
        answer = admin_api.post(f"{IMPORT}?dry_run=false", upload(data), format="multipart")
        assert answer.status_code == 200, answer.content
        assert (answer.json()["create"], answer.json()["update"], answer.json()["skip"]) == (0, 0, 3)


def test_a_workbook_imports_sites_with_the_csv_rules_admins_only(admin_api):
    book = Workbook()
    for row in (
        ["site_id", "name", "timezone", "is_active"],
        ["site-1", "One", "Europe/Paris", True],  # a spreadsheet's boolean cell
        ["site-2", "Two", None, False],
    ):
        book.active.append(row)
    out = io.BytesIO()
    book.save(out)
    manager = UserFactory()
    SiteMembershipFactory(user=manager, site=SiteFactory(), role=MembershipRole.MANAGER)
    assert token_client(manager).post(IMPORT, upload(out.getvalue()), format="multipart").status_code == 403

    answer = admin_api.post(f"{IMPORT}?dry_run=false", upload(out.getvalue()), format="multipart")
    assert answer.status_code == 200, answer.content
    assert set(
        Site.objects.filter(site_id__in=["site-1", "site-2"]).values_list("site_id", "timezone", "is_active")
    ) == {
        ("site-1", "Europe/Paris", True),
        ("site-2", "UTC", False),
    }
