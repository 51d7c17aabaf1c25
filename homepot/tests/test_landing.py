"""The console's landing page: the fleet at a glance, its refresh, and the ways to the fleet
pages from every page (homepot.admin.HomepotAdminSite.index / glance_view)."""

import re

import pytest
from django.urls import reverse
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app.tests.factories import DeliveryFactory, JobFactory
from monitoring_app.models import Alert
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")
GLANCE = reverse("admin:fleet_glance")
DASHBOARD = reverse("admin:monitoring_fleet_dashboard")


def tiles(response) -> dict[str, int]:
    """The numbers of the glance's tiles, as a user reads them."""
    found = re.findall(r'data-count="(\w+)"><span class="hp-tile-n">(\d+)</span>', response.text)
    return {name: int(number) for name, number in found}


def alert(site, message, severity="warning"):
    now = timezone.now()
    return Alert.objects.create(
        site=site, kind="site_offline", severity=severity, message=message, opened_at=now, last_seen_at=now
    )


@pytest.fixture
def chain():
    """Two stores: "mine" with a device in every state, "theirs" with devices in trouble."""
    mine, theirs = (
        SiteFactory(site_id="site-mine", name="Main Street"),
        SiteFactory(site_id="site-theirs", name="Harbour Road"),
    )
    DeviceFactory.create_batch(2, site=mine, status="online", health_status="healthy")
    DeviceFactory(site=mine, status="online", health_status="")  # no report yet: healthy
    DeviceFactory(site=mine, status="online", health_status="degraded")
    DeviceFactory(site=mine, status="online", health_status="unhealthy")
    DeviceFactory.create_batch(2, site=mine, status="offline")
    DeviceFactory(site=mine, status="error")
    DeviceFactory(site=mine, status="maintenance")
    DeviceFactory(site=mine, status="unknown")
    DeviceFactory.create_batch(4, site=theirs, status="offline")
    alert(mine, "till-1 offline")
    alert(theirs, "Harbour Road is down", severity="critical")
    DeliveryFactory(job=JobFactory(site=mine, status="sent"), device=mine.devices.first())
    JobFactory(site=theirs, status="queued")
    JobFactory(site=mine, status="completed")  # finished: not in progress
    return mine, theirs


def manager_of(client, site):
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    client.force_login(user)
    return user


def test_the_landing_page_counts_add_up_to_the_total(admin_browser, chain):
    response = admin_browser.get(INDEX)

    assert response.status_code == 200
    counts = tiles(response)
    assert counts == {
        "total": 14,
        "online": 5,
        "offline": 6,
        "error": 1,
        "maintenance": 1,
        "unknown": 1,
        "healthy": 3,
        "degraded": 1,
        "unhealthy": 1,
    }
    connection = ("online", "offline", "error", "maintenance", "unknown")
    assert sum(counts[name] for name in connection) == counts["total"]
    assert counts["healthy"] + counts["degraded"] + counts["unhealthy"] == counts["online"]
    assert "Open alerts: 2" in response.text and "Jobs in progress: 2" in response.text


def test_the_landing_page_links_to_what_it_counts(admin_browser, chain):
    mine, theirs = chain
    text = admin_browser.get(INDEX).text

    assert f'href="{DASHBOARD}"' in text  # the fleet dashboard, by a click
    assert reverse("admin:sites_app_site_change", args=[theirs.pk]) in text  # sites in trouble
    critical = Alert.objects.get(severity="critical")
    assert reverse("admin:monitoring_app_alert_change", args=[critical.pk]) in text
    assert reverse("admin:monitoring_app_alert_changelist") + "?state=open" in text
    assert reverse("admin:devices_app_device_changelist") + "?status=error" in text
    jobs = reverse("admin:jobs_app_job_changelist")
    assert f"{jobs}?status__in=queued,sent,acknowledged,scheduled,paused" in text


def test_the_linked_lists_hold_the_numbers_the_tiles_show(admin_browser, chain):
    devices = reverse("admin:devices_app_device_changelist")
    for query, expected in (
        ("status=online&health_status__in=healthy,", 3),
        ("status=online&health_status=degraded", 1),
        ("status=error", 1),
        ("status=unknown", 1),
    ):
        response = admin_browser.get(f"{devices}?{query}")
        assert response.status_code == 200, query
        assert response.context["cl"].result_count == expected, query


def test_a_store_manager_sees_only_their_stores_numbers(client, chain):
    mine, theirs = chain
    manager_of(client, mine)

    response = client.get(INDEX)

    counts = tiles(response)
    assert counts["total"] == 10 and counts["offline"] == 2
    assert "till-1 offline" in response.text
    assert "Harbour Road" not in response.text  # neither its trouble nor its alert
    assert "Open alerts: 1" in response.text and "Jobs in progress: 1" in response.text


def test_the_refresh_answers_the_same_numbers_with_the_same_scope(client, chain):
    mine, _ = chain
    manager_of(client, mine)

    page, fragment = client.get(INDEX), client.get(GLANCE)

    assert fragment.status_code == 200
    assert "no-store" in fragment["Cache-Control"]
    assert "<html" not in fragment.text  # only the numbers, to swap in place
    assert tiles(fragment) == tiles(page)
    assert "Harbour Road" not in fragment.text
    # The page tells its script where and how often to refresh.
    assert f'data-refresh-url="{GLANCE}"' in page.text and 'data-refresh-seconds="30"' in page.text


def test_the_refresh_needs_a_signed_in_staff_user(client, chain):
    response = client.get(GLANCE)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_a_user_who_may_not_view_sites_gets_no_glance(client, chain):
    client.force_login(UserFactory(is_staff=True))
    assert 'id="fleet-glance"' not in client.get(INDEX).text
    assert tiles(client.get(GLANCE)) == {}


def test_the_landing_page_queries_do_not_grow_with_the_fleet(
    admin_browser, chain, django_assert_max_num_queries
):
    def queries(url):
        with django_assert_max_num_queries(12) as captured:
            assert admin_browser.get(url).status_code == 200
        return len(captured)

    before = queries(INDEX), queries(GLANCE)
    for n in range(5):
        site = SiteFactory(site_id=f"site-more-{n}")
        DeviceFactory.create_batch(3, site=site, status="offline")
        alert(site, f"more {n}")
        JobFactory(site=site, status="queued")
    assert (queries(INDEX), queries(GLANCE)) == before


def test_every_page_has_the_fleet_pages_in_its_sidebar(admin_browser, chain):
    text = admin_browser.get(reverse("admin:devices_app_device_changelist")).text
    sidebar = text[text.index('id="nav-sidebar"') :]
    assert f'href="{DASHBOARD}"' in sidebar and f'href="{INDEX}"' in sidebar
    assert "Fleet at a glance" in sidebar
