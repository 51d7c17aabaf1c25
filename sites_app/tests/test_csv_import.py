"""Site CSV import through the API (administrators only): preview, row errors, apply, audit."""

import pytest

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.models import AuditLog
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/sites/import"
HEADER = "site_id,name,region,timezone,is_active\n"


def post_csv(client, text, dry_run=None):
    url = URL if dry_run is None else f"{URL}?dry_run={dry_run}"
    return client.generic("POST", url, text.encode(), content_type="text/csv")


def test_preview_then_apply_all_or_nothing_with_one_audit_row(admin_api):
    SiteFactory(site_id="site-1", name="One", region="North", timezone="UTC", is_active=True)
    text = HEADER + "site-1,One,North,UTC,true\nsite-2,Two,South,Europe/Paris,false\nsite-1b,=Evil,,,\n"

    preview = post_csv(admin_api, text).json()
    assert (preview["create"], preview["update"], preview["skip"], preview["applied"]) == (2, 0, 1, False)
    assert Site.objects.count() == 1

    applied = post_csv(
        admin_api, text.replace("site-1,One,North", "site-1,Uno,North"), dry_run="false"
    ).json()
    assert (applied["create"], applied["update"], applied["skip"]) == (2, 1, 0)
    assert Site.objects.get(site_id="site-1").name == "Uno"
    two = Site.objects.get(site_id="site-2")
    assert (two.timezone, two.is_active, two.region) == ("Europe/Paris", False, "South")
    assert Site.objects.get(site_id="site-1b").timezone == "UTC"
    audit = AuditLog.objects.get(event_type="sites.imported")
    assert audit.new_values == {"rows": 3, "created": 2, "updated": 1, "skipped": 0}


def test_row_errors_write_nothing(admin_api):
    text = HEADER + "site-3,Three,,Mars/Base,\nsite-3,Again,,,\nbad id,,,,maybe\n"
    response = post_csv(admin_api, text, dry_run="false")

    assert response.status_code == 400
    errors = {(e["row"], e["field"]) for e in response.json()["preview"]["errors"]}
    assert errors == {(2, "timezone"), (4, "site_id"), (4, "name"), (4, "is_active")}
    assert not Site.objects.exists()
    assert not AuditLog.objects.filter(event_type="sites.imported").exists()


def test_an_export_imports_back_unchanged(admin_api):
    SiteFactory(site_id="site-x", name="@Home", description="Notes, with a comma")
    exported = b"".join(admin_api.get("/api/v1/sites/export").streaming_content).decode()
    body = post_csv(admin_api, exported).json()
    assert (body["create"], body["update"], body["skip"]) == (0, 0, 1)


def test_only_admins_import_sites():
    site = SiteFactory()
    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=site, role=MembershipRole.MANAGER)
    assert post_csv(token_client(manager), HEADER + "site-9,Nine,,,\n").status_code == 403
