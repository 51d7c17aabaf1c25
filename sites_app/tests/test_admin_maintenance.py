"""The site page's maintenance windows and blackout dates (inlines), saved as one audited
schedule through the service, and the site's "maintenance window" line."""

import datetime

import pytest

from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog
from sites_app.tests.factories import MaintenanceWindowFactory, SiteFactory
from sites_app.tests.test_admin import change_url, form_data, inline_management

pytestmark = pytest.mark.django_db


def site_form(site, windows=(), blackouts=(), initial_windows=0, **overrides):
    data = form_data(
        site_id=site.site_id, name=site.name, location=site.location, region=site.region, **overrides
    )
    data.update(inline_management("maintenance_windows", total=len(windows), initial=initial_windows))
    data.update(inline_management("blackouts", total=len(blackouts)))
    for index, row in enumerate(windows):
        data.update({f"maintenance_windows-{index}-{key}": value for key, value in row.items()})
    for index, row in enumerate(blackouts):
        data.update({f"blackouts-{index}-{key}": value for key, value in row.items()})
    return data


def test_the_site_page_lists_the_windows_and_says_whether_one_is_open(admin_browser):
    site = SiteFactory(timezone="Europe/London")
    MaintenanceWindowFactory(site=site, weekday=1, starts=datetime.time(2), ends=datetime.time(5))

    response = admin_browser.get(change_url(site))

    assert response.status_code == 200
    page = response.content.decode()
    assert "maintenance_windows-0-weekday" in page and "blackouts-TOTAL_FORMS" in page
    assert "Maintenance window:" in page
    assert ("open now" in page) or ("Europe/London, in" in page)


def test_windows_and_blackouts_added_on_the_site_page_are_one_audited_change(admin_browser):
    site = SiteFactory(site_id="site-900", description="", timezone="Europe/London")

    response = admin_browser.post(
        change_url(site),
        site_form(
            site,
            windows=[
                {"weekday": "6", "starts": "22:00", "ends": "02:00"},
                {"weekday": "7", "starts": "01:00", "ends": "07:00"},
            ],
            blackouts=[{"starts_on": "2026-12-24", "ends_on": "2026-12-26", "reason": "Christmas"}],
        ),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    assert [str(w) for w in site.maintenance_windows.all()] == ["Saturday 22:00-02:00", "Sunday 01:00-07:00"]
    assert site.blackouts.get().reason == "Christmas"
    row = AuditLog.objects.get(event_type=AuditEvent.SITE_UPDATED)
    assert (
        len(row.new_values["maintenance_windows"]) == 2
        and row.new_values["blackouts"][0]["reason"] == "Christmas"
    )


def test_a_bad_blackout_is_a_message_and_nothing_is_stored(admin_browser):
    site = SiteFactory(site_id="site-900", description="", timezone="Europe/London")

    response = admin_browser.post(
        change_url(site),
        site_form(site, blackouts=[{"starts_on": "2026-12-26", "ends_on": "2026-12-24", "reason": ""}]),
        follow=True,
    )

    assert response.status_code == 200
    assert "on or after the first" in response.content.decode()
    assert not site.blackouts.exists()
    assert not AuditLog.objects.filter(event_type=AuditEvent.SITE_UPDATED).exists()
