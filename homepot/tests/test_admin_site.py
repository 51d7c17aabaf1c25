"""The operator console as a whole: branding, the index a store manager sees, and the
pieces every app's admin shares (homepot.admin)."""

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.admin import EstimatedCountPaginator
from monitoring_app import partitions
from monitoring_app.tests.factories import HealthCheckFactory

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")


def test_index_groups_apps_the_way_a_store_manager_thinks(admin_browser):
    response = admin_browser.get(INDEX)

    assert response.status_code == 200
    labels = [app["app_label"] for app in response.context["app_list"]]
    assert labels[:5] == ["sites_app", "devices_app", "jobs_app", "monitoring_app", "accounts"]
    names = [app["name"] for app in response.context["app_list"]][:5]
    assert names == ["Sites", "Devices", "Jobs", "Monitoring", "People and access"]
    positions = [
        response.text.index(f'id="{name.lower()}-app"' if False else f">{name}</a>") for name in names
    ]
    assert positions == sorted(positions)


def test_index_lists_every_model(admin_browser):
    response = admin_browser.get(INDEX)

    models = {model["object_name"] for app in response.context["app_list"] for model in app["models"]}
    expected = {"Site", "Device", "Job", "HealthCheck", "AuditLog", "User", "SiteMembership", "ApiToken"}
    assert expected <= models


def test_console_is_branded_homepot(admin_browser):
    response = admin_browser.get(INDEX)

    assert "<title>Your fleet at a glance | HOMEPOT</title>" in response.text
    assert '<span class="hp-brand">HOMEPOT</span>' in response.text
    assert "Django administration" not in response.text


def test_login_page_is_branded_too(client):
    response = client.get(reverse("admin:login"))

    assert response.status_code == 200
    assert "HOMEPOT" in response.text
    assert "Django administration" not in response.text


def test_a_site_manager_sees_the_store_apps_their_role_grants_but_not_accounts(client):
    user = UserFactory(is_staff=True)
    grant_perms(user, "accounts.view_user")
    SiteMembershipFactory(user=user, role=MembershipRole.MANAGER)
    client.force_login(user)

    response = client.get(INDEX)

    # The role grants the store apps; users are for superusers only, whatever Django
    # permissions say.
    assert [app["app_label"] for app in response.context["app_list"]] == [
        "sites_app",
        "devices_app",
        "jobs_app",
        "monitoring_app",
    ]


def test_a_staff_user_without_any_site_sees_no_apps(client):
    client.force_login(UserFactory(is_staff=True))
    assert client.get(INDEX).context["app_list"] == []


def test_a_non_staff_user_is_sent_to_the_login_page(client):
    client.force_login(UserFactory(is_staff=False))

    response = client.get(INDEX)

    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


def test_a_huge_unfiltered_table_is_estimated_not_counted(admin_browser, monkeypatch):
    DeviceFactory.create_batch(3, status="online")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_app_device")
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 0)
    # Pages of 2: the filtered list fills its first page, so it is counted (a list that fits
    # its first page is not: test_admin's test_a_search_that_fits_one_page_reads_the_fleet_once).
    monkeypatch.setattr(admin.site.get_model_admin(Device), "list_per_page", 2)
    changelist = reverse("admin:devices_app_device_changelist")

    with CaptureQueriesContext(connection) as unfiltered:
        assert admin_browser.get(changelist).status_code == 200
    with CaptureQueriesContext(connection) as filtered:
        assert admin_browser.get(changelist, {"status__exact": "online"}).status_code == 200

    def counts(queries):
        return [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]

    assert counts(unfiltered) == []
    assert any("reltuples" in q["sql"] for q in unfiltered.captured_queries)
    assert len(counts(filtered)) == 1


def test_the_partitioned_health_history_is_estimated_from_its_partitions(admin_browser, monkeypatch):
    HealthCheckFactory.create_batch(3)
    with connection.cursor() as cursor:  # the partitions only, as autovacuum does
        for part in partitions.partitions(partitions.HEALTH):
            cursor.execute(f"ANALYZE {part.name}")
    monkeypatch.setattr(EstimatedCountPaginator, "estimate_above", 0)

    with CaptureQueriesContext(connection) as queries:  # any date: the whole history, unfiltered
        response = admin_browser.get(
            reverse("admin:monitoring_app_healthcheck_changelist"), {"window": "all"}
        )

    assert response.status_code == 200
    assert response.context["cl"].result_count == 3
    assert not [q for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]


def test_a_filtered_list_is_counted_exactly_up_to_a_bound_then_estimated(admin_browser, monkeypatch):
    site = DeviceFactory(status="online").site
    DeviceFactory.create_batch(4, site=site, status="online")
    DeviceFactory(status="offline")
    changelist = reverse("admin:devices_app_device_changelist")

    monkeypatch.setattr(admin.site.get_model_admin(Device), "list_per_page", 2)  # a full first page
    small = admin_browser.get(changelist, {"status__exact": "online"})
    monkeypatch.setattr(EstimatedCountPaginator, "count_at_most", 2)
    with CaptureQueriesContext(connection) as queries:
        big = admin_browser.get(changelist, {"status__exact": "online"})

    assert small.context["cl"].result_count == 5  # under the bound: exact
    # Over the bound: the count stopped at 3 rows and the planner's estimate (at least 3)
    # was shown; the first page still lists its two rows.
    assert big.context["cl"].result_count >= 3
    assert len(big.context["cl"].result_list) == 2
    assert any("LIMIT 3" in q["sql"] and "COUNT(*)" in q["sql"].upper() for q in queries.captured_queries)
    assert any(q["sql"].startswith("EXPLAIN") for q in queries.captured_queries)
