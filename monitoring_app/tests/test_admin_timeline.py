"""The timeline on the admin's device and site change pages (the timeline API's selectors)."""

import datetime
import re
import zoneinfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app.tests.factories import DeliveryFactory
from monitoring_app.models import Alert, DeviceStatusChange
from monitoring_app.services import audit_record
from monitoring_app.tests.factories import HealthCheckFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def ago(minutes):
    return timezone.now() - datetime.timedelta(minutes=minutes)


def timeline_rows(response):
    assert response.status_code == 200
    table = re.search(r'<table class="hp-timeline">.*?<tbody>(.*?)</tbody>', response.content.decode(), re.S)
    assert table, "no timeline on the page"
    rows = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", table.group(1), re.S)
    return [(kind, re.sub(r"<[^>]+>", "", text)) for _, kind, text in rows]


@pytest.fixture
def till():
    device = DeviceFactory(device_id="till-1", site=SiteFactory(site_id="store-1"))
    HealthCheckFactory(device=device, status="degraded", error_message="paper low", checked_at=ago(50))
    DeviceStatusChange.objects.create(
        device=device, old_status="online", new_status="offline", reason="sweep", changed_at=ago(40)
    )
    Alert.objects.create(
        site=device.site,
        device=device,
        kind="device_offline",
        severity="warning",
        message="till-1 offline",
        opened_at=ago(30),
        last_seen_at=ago(30),
    )
    DeliveryFactory(device=device, job__site=device.site)
    audit_record(event_type="device.updated", device=device, site=device.site, description="Renamed till-1")
    return device


def test_the_device_page_shows_its_timeline_newest_first(admin_browser, till):
    rows = timeline_rows(admin_browser.get(reverse("admin:devices_app_device_change", args=[till.pk])))

    # Recorded by the product, not by a person: "system", as the audit list says.
    assert [kind for kind, _ in rows] == ["system", "job", "alert", "connectivity", "health"]
    assert rows[0][1] == "Renamed till-1"
    assert rows[1][1].endswith("Update POS payment configuration: Pending")  # names, not codes
    assert rows[2][1] == "Alert opened: till-1 offline"
    assert rows[4][1] == "Degraded: paper low"


def test_the_site_page_shows_its_devices_events_without_health_reports(admin_browser, till):
    rows = timeline_rows(admin_browser.get(reverse("admin:sites_app_site_change", args=[till.site.pk])))

    kinds = [kind for kind, _ in rows]
    assert "health" not in kinds
    assert {"system", "job", "alert", "connectivity"} <= set(kinds)
    assert any(kind == "connectivity" and text.startswith("till-1: online → offline") for kind, text in rows)


def test_the_timeline_is_bounded_and_its_queries_do_not_grow(admin_browser, django_assert_max_num_queries):
    device = DeviceFactory()
    page = reverse("admin:devices_app_device_change", args=[device.pk])
    HealthCheckFactory.create_batch(3, device=device)
    with CaptureQueriesContext(connection) as few:
        admin_browser.get(page)
    HealthCheckFactory.create_batch(60, device=device)

    with django_assert_max_num_queries(len(few)):
        rows = timeline_rows(admin_browser.get(page))

    assert len(rows) == 50


def test_another_sites_device_page_is_not_shown(client, till):
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=SiteFactory())
    client.force_login(user)

    response = client.get(reverse("admin:devices_app_device_change", args=[till.pk]))

    assert response.status_code in (302, 404)
    assert "Renamed till-1" not in response.content.decode()


def test_the_site_timeline_runs_on_the_sites_clock_and_names_people(admin_browser, admin_user, till):
    site = till.site
    site.timezone = "Asia/Tokyo"
    site.save()
    audit_record(event_type="site.updated", actor=admin_user, site=site, description="Renamed the store")
    response = admin_browser.get(reverse("admin:sites_app_site_change", args=[site.pk]))
    text = response.content.decode()

    assert "<th>when (Asia/Tokyo)</th>" in text
    newest = timezone.now().astimezone(zoneinfo.ZoneInfo("Asia/Tokyo"))
    assert f"{newest:%Y-%m-%d %H}" in text  # Tokyo's hour, not UTC's
    rows = timeline_rows(response)
    assert rows[0] == (f"operator ({admin_user.username})", "Renamed the store")
