"""The site list's Import CSV page: upload, preview table, confirm; administrators only."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from monitoring_app.models import AuditLog
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

URL = "/admin/sites_app/site/import/"


def upload(text: str):
    return {"file": SimpleUploadedFile("sites.csv", text.encode(), content_type="text/csv")}


def test_the_url_and_the_changelist_link(admin_browser):
    assert reverse("admin:sites_app_site_import") == URL
    page = admin_browser.get(reverse("admin:sites_app_site_changelist")).content.decode()
    assert URL in page and "Import CSV" in page
    form = admin_browser.get(URL).content.decode()
    assert "Import sites from CSV" in form and "site_id and name are required" in form


def test_upload_previews_then_confirm_applies_once(admin_browser):
    SiteFactory(site_id="site-north", name="North", timezone="UTC")
    text = (
        "site_id,name,timezone,is_active\n"
        "site-north,North Branch,Europe/London,true\n"
        "site-south,South,,\n"
        "site-east,East,UTC,false\n"
    )
    preview = admin_browser.post(URL, upload(text))
    assert preview.status_code == 200
    shown = preview.context["preview"]
    assert (shown["create"], shown["update"], shown["skip"]) == (2, 1, 0)
    page = preview.content.decode()
    assert "Import 2 new and 1 changed sites" in page and "<th>Site ID</th>" in page
    assert [(o["ident"], o["action"]) for o in shown["outcomes"]] == [
        ("site-north", "update"),
        ("site-south", "create"),
        ("site-east", "create"),
    ]
    assert Site.objects.count() == 1  # nothing written by the preview

    done = admin_browser.post(URL, {"token": preview.context["token"]})
    assert done.status_code == 302 and done["Location"] == reverse("admin:sites_app_site_changelist")
    assert set(Site.objects.values_list("site_id", "name", "timezone", "is_active")) == {
        ("site-north", "North Branch", "Europe/London", True),
        ("site-south", "South", "UTC", True),
        ("site-east", "East", "UTC", False),
    }
    assert AuditLog.objects.filter(event_type="sites.imported").count() == 1
    again = admin_browser.post(URL, {"token": preview.context["token"]})
    assert "expired" in again.content.decode()
    assert AuditLog.objects.filter(event_type="sites.imported").count() == 1


def test_row_errors_name_the_row_field_and_reason_and_nothing_is_offered(admin_browser):
    text = "site_id,name,timezone\nsite-a,A,Mars/Olympus\nsite-b,B,UTC\n,No id,UTC\n"
    page = admin_browser.post(URL, upload(text))
    errors = page.context["preview"]["errors"]
    assert [(e["row"], e["ident"], e["field"]) for e in errors] == [
        (2, "site-a", "timezone"),
        (4, "", "site_id"),
    ]
    assert "token" not in page.context
    assert "Unknown time zone" in page.content.decode()
    assert not Site.objects.exists()


def test_an_unreadable_file_is_named(admin_browser):
    page = admin_browser.post(URL, upload("name\nx\n"))
    assert "Missing column(s): site_id" in page.context["problem"]


def test_a_manager_may_not_import_sites(client):
    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=SiteFactory(), role=MembershipRole.MANAGER)
    client.force_login(manager)
    assert client.get(URL).status_code == 403
    assert client.post(URL, upload("site_id,name\nsite-x,X\n")).status_code == 403
    assert "Import CSV" not in client.get(reverse("admin:sites_app_site_changelist")).content.decode()
    assert not Site.objects.filter(site_id="site-x").exists()
