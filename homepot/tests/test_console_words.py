"""The console speaks the chain's words, not Django's: what a store manager reads on the
lists, record pages, breadcrumbs and header (homepot/templates/admin)."""

import html
import re

import pytest
from django.urls import reverse

from accounts.tests.factories import UserFactory
from homepot.admin import count_of, format_percent, format_rate, status_badge
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def breadcrumbs(response) -> str:
    crumbs = re.search(r'<div class="breadcrumbs">(.*?)</div>', response.text, re.S).group(1)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", crumbs)).split())


def test_a_list_is_titled_by_what_it_lists(admin_browser):
    response = admin_browser.get(reverse("admin:sites_app_site_changelist"))

    assert "<h1>Sites</h1>" in response.text and "<title>Sites | HOMEPOT</title>" in response.text
    assert "to change" not in response.text and "to view" not in response.text
    assert breadcrumbs(response) == "Home › Sites"  # not "Home › Sites › Sites"


def test_a_list_in_an_app_of_several_keeps_the_app_in_its_breadcrumbs(admin_browser):
    response = admin_browser.get(reverse("admin:monitoring_app_alert_changelist"))
    assert breadcrumbs(response) == "Home › Monitoring › Alerts"


def test_a_record_is_titled_by_its_name(admin_browser):
    site = SiteFactory(site_id="site-042", name="Harbour Road")
    response = admin_browser.get(reverse("admin:sites_app_site_change", args=[site.pk]))

    assert f"<h1>{site}</h1>" in response.text
    assert '<h2 class="hp-kind">Site</h2>' in response.text
    assert "Change site" not in response.text
    assert breadcrumbs(response) == f"Home › Sites › {site}"
    assert f"<title>{site} | Site | HOMEPOT</title>" in response.text


def test_a_viewer_is_told_the_record_is_view_only(client):
    from accounts.choices import MembershipRole
    from accounts.tests.factories import SiteMembershipFactory

    site = SiteFactory()
    viewer = UserFactory(is_staff=True)
    SiteMembershipFactory(user=viewer, site=site, role=MembershipRole.VIEWER)
    client.force_login(viewer)

    response = client.get(reverse("admin:sites_app_site_change", args=[site.pk]))

    assert response.status_code == 200
    assert '<h2 class="hp-kind">Site (view only)</h2>' in response.text


def test_the_add_page_still_says_what_it_adds(admin_browser):
    response = admin_browser.get(reverse("admin:sites_app_site_add"))
    assert "<h1>Add site</h1>" in response.text


def test_api_tokens_are_spelled_as_such(admin_browser):
    index = admin_browser.get(reverse("admin:index")).text
    assert "API tokens" in index and "Api tokens" not in index
    response = admin_browser.get(reverse("admin:accounts_apitoken_changelist"))
    assert breadcrumbs(response) == "Home › People and access › API tokens"


def test_the_header_offers_the_api_docs_not_view_site(admin_browser):
    text = admin_browser.get(reverse("admin:sites_app_site_changelist")).text
    user_tools = re.search(r'<div id="user-tools">(.*?)</div>', text, re.S).group(1)

    assert "View site" not in user_tools
    assert f'<a href="{reverse("swagger-ui")}">API docs</a>' in user_tools
    assert "Times in UTC" in user_tools  # every time on the console is in this zone


@pytest.mark.parametrize(
    ("value", "tone"),
    [
        ("online", "ok"),
        ("completed", "ok"),
        ("offline", "muted"),
        ("degraded", "warn"),
        ("maintenance", "warn"),
        ("retrying", "warn"),
        ("error", "bad"),
        ("failed", "bad"),
        ("unhealthy", "bad"),
        ("critical", "bad"),
        ("timed_out", "bad"),
        ("something new", "muted"),
    ],
)
def test_every_status_has_one_colour(value, tone):
    assert f"hp-badge--{tone}" in status_badge(value)


def test_a_badge_without_a_label_writes_the_value_out():
    assert status_badge("timed_out") == '<span class="hp-badge hp-badge--bad">Timed out</span>'


@pytest.mark.parametrize(
    ("per_second", "text"),
    [
        (1.375, "1.4 per second"),
        (2.0, "2 per second"),
        (12.6, "13 per second"),
        (0.5, "30 per minute"),
        (0.0005, "1.8 per hour"),
        (0, "—"),
    ],
)
def test_rates_read_as_people_say_them(per_second, text):
    assert format_rate(per_second) == text


def test_shares_and_counts_read_as_people_say_them():
    assert format_percent(0.0) == "0 %" and format_percent(83.4) == "83 %" and format_percent(0.2) == "<1 %"
    assert format_percent(None) == "—"
    assert count_of(1, "device") == "1 device" and count_of(1000, "device") == "1,000 devices"
