"""Site CSV export, through the API and the admin: content, scope, filters, the guard."""

import csv
import io

import pytest
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from homepot.tests.api_helpers import assert_error, token_client
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def rows_of(response) -> list[dict]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


@pytest.fixture
def sites(db):
    return (
        SiteFactory(site_id="site-a1", region="North", is_active=True),
        SiteFactory(site_id="site-a2", region="South", is_active=False, name="=cmd|' /C calc'!A0"),
    )


def test_api_export_lists_sites_filtered(admin_api, sites):
    rows = rows_of(admin_api.get("/api/v1/sites/export"))
    assert [row["site_id"] for row in rows] == ["site-a1", "site-a2"]
    assert rows[0]["is_active"] == "true"
    assert rows[0]["timezone"] == "Europe/London"
    # The formula-injection guard.
    assert rows[1]["name"] == "'=cmd|' /C calc'!A0"

    assert [r["site_id"] for r in rows_of(admin_api.get("/sites/export?region=South"))] == ["site-a2"]
    assert [r["site_id"] for r in rows_of(admin_api.get("/sites/export?is_active=true"))] == ["site-a1"]
    assert_error(admin_api.get("/api/v1/sites/export?is_active=maybe"), 400, field="is_active")


def test_api_export_of_a_member_holds_only_their_sites(sites):
    viewer = UserFactory()
    SiteMembershipFactory(user=viewer, site=sites[0], role=MembershipRole.VIEWER)
    assert [r["site_id"] for r in rows_of(token_client(viewer).get("/api/v1/sites/export"))] == ["site-a1"]


def test_admin_export_carries_the_changelist_filters_and_scope(admin_browser, client, sites):
    url = reverse("admin:sites_app_site_export")
    assert [r["site_id"] for r in rows_of(admin_browser.get(url + "?region=South"))] == ["site-a2"]
    page = admin_browser.get(reverse("admin:sites_app_site_changelist") + "?region=South").content.decode()
    assert url + "?region=South" in page

    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=sites[1], role=MembershipRole.MANAGER)
    client.force_login(manager)
    assert [r["site_id"] for r in rows_of(client.get(url))] == ["site-a2"]
