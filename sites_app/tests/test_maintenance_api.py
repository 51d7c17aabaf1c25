"""GET/PUT /sites/{site_id}/maintenance: a site's maintenance windows and blackout dates,
through the API as operators use it: scoped, validated (400 naming the field), audited."""

from datetime import datetime

import pytest

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from homepot.tests.api_helpers import assert_error, token_client
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import BlackoutPeriodFactory, MaintenanceWindowFactory, SiteFactory

pytestmark = pytest.mark.django_db

SCHEDULE = {
    "maintenance_windows": [{"weekday": day, "starts": "02:00", "ends": "05:00"} for day in range(1, 7)]
    + [{"weekday": 7, "starts": "22:00", "ends": "07:00"}],
    "blackouts": [{"starts_on": "2026-12-24", "ends_on": "2026-12-26", "reason": "Christmas"}],
}


def maintenance_rows(site):
    return AuditLog.objects.filter(event_type=AuditEvent.SITE_UPDATED, site_ref=site.site_id)


def test_an_admin_sets_a_schedule_and_reads_it_back_with_the_next_opening(admin_api):
    site = SiteFactory(site_id="site-lon", timezone="Europe/London")

    response = admin_api.put("/sites/site-lon/maintenance", SCHEDULE, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["timezone"] == "Europe/London"
    assert body["maintenance_windows"][0] == {"weekday": 1, "starts": "02:00:00", "ends": "05:00:00"}
    assert body["maintenance_windows"][-1] == {"weekday": 7, "starts": "22:00:00", "ends": "07:00:00"}
    assert body["blackouts"] == SCHEDULE["blackouts"]
    assert isinstance(body["open_now"], bool) and body["next_opening"]
    read_back = admin_api.get("/api/v1/sites/site-lon/maintenance").json()
    if body["open_now"]:
        # While a window is open the next opening is "now", which moves between the two requests.
        later, first = read_back.pop("next_opening"), body.pop("next_opening")
        assert read_back["open_now"] and datetime.fromisoformat(later) >= datetime.fromisoformat(first)
    assert read_back == body
    assert site.maintenance_windows.count() == 7 and site.blackouts.count() == 1


def test_a_change_is_audited_once_with_the_old_and_new_schedule_and_a_repeat_records_nothing(admin_api):
    site = SiteFactory(site_id="site-lon")
    MaintenanceWindowFactory(site=site, weekday=1)

    admin_api.put("/sites/site-lon/maintenance", SCHEDULE, format="json")
    admin_api.put("/sites/site-lon/maintenance", SCHEDULE, format="json")

    row = maintenance_rows(site).get()
    assert row.actor == admin_api.user
    assert row.old_values["maintenance_windows"] == [{"weekday": 1, "starts": "02:00", "ends": "05:00"}]
    assert len(row.new_values["maintenance_windows"]) == 7
    assert row.new_values["blackouts"][0]["reason"] == "Christmas"
    assert row.old_values["blackouts"] == []


def test_empty_lists_clear_the_schedule(admin_api):
    site = SiteFactory(site_id="site-lon")
    MaintenanceWindowFactory(site=site)
    BlackoutPeriodFactory(site=site)

    response = admin_api.put(
        "/sites/site-lon/maintenance", {"maintenance_windows": [], "blackouts": []}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["open_now"] is True  # no window: any time
    assert not site.maintenance_windows.exists() and not site.blackouts.exists()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"maintenance_windows": [{"weekday": 8, "starts": "02:00", "ends": "05:00"}]},
            "maintenance_windows.0.weekday",
        ),
        (
            {"maintenance_windows": [{"weekday": 1, "starts": "25:00", "ends": "05:00"}]},
            "maintenance_windows.0.starts",
        ),
        ({"maintenance_windows": [{"weekday": 1, "starts": "02:00"}]}, "maintenance_windows.0.ends"),
        (
            {"maintenance_windows": [{"weekday": 1, "starts": "02:00", "ends": "03:00"}] * 2},
            "maintenance_windows.1.starts",
        ),
        (
            {"maintenance_windows": [{"weekday": 1, "starts": "02:00", "ends": "03:00"}] * 29},
            "maintenance_windows",
        ),
        ({"blackouts": [{"starts_on": "2026-12-26", "ends_on": "2026-12-24"}]}, "blackouts.0.ends_on"),
        ({"blackouts": [{"starts_on": "2026-01-01", "ends_on": "2026-12-31"}]}, "blackouts.0.ends_on"),
        ({"blackouts": [{"starts_on": "24/12/2026", "ends_on": "2026-12-26"}]}, "blackouts.0.starts_on"),
        ({"blackouts": None}, "blackouts"),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_changes_nothing(admin_api, change, field):
    site = SiteFactory(site_id="site-lon")
    MaintenanceWindowFactory(site=site)

    response = admin_api.put("/sites/site-lon/maintenance", {**SCHEDULE, **change}, format="json")

    assert_error(response, 400, field=field)
    assert site.maintenance_windows.count() == 1 and not site.blackouts.exists()
    assert not maintenance_rows(site).exists()


@pytest.fixture
def people():
    mine = SiteFactory(site_id="site-mine")
    SiteFactory(site_id="site-theirs")
    manager, viewer = UserFactory(), UserFactory()
    SiteMembershipFactory(user=manager, site=mine, role=MembershipRole.MANAGER)
    SiteMembershipFactory(user=viewer, site=mine, role=MembershipRole.VIEWER)
    return token_client(manager), token_client(viewer)


def test_a_manager_sets_their_own_stores_hours_but_another_operators_site_is_a_404(people):
    manager, _ = people

    assert manager.put("/sites/site-mine/maintenance", SCHEDULE, format="json").status_code == 200
    assert_error(manager.put("/sites/site-theirs/maintenance", SCHEDULE, format="json"), 404)
    assert_error(manager.get("/sites/site-theirs/maintenance"), 404)


def test_a_viewer_reads_the_hours_but_may_not_change_them(people):
    _, viewer = people

    assert viewer.get("/sites/site-mine/maintenance").status_code == 200
    assert_error(viewer.put("/sites/site-mine/maintenance", SCHEDULE, format="json"), 403)


def test_anonymous_is_a_401(client):
    SiteFactory(site_id="site-lon")
    assert client.get("/sites/site-lon/maintenance").status_code == 401
