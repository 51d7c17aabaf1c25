"""The Devices pages of the operator console, driven through the admin client."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from homepot.admin import SiteListFilter
from monitoring_app.choices import AuditEvent
from monitoring_app.models import AuditLog, HealthCheck
from monitoring_app.tests.factories import HealthCheckFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:devices_app_device_changelist")
ADD = reverse("admin:devices_app_device_add")
SITE_AUTOCOMPLETE = {"app_label": "devices_app", "model_name": "device", "field_name": "site"}


def change_url(device):
    return reverse("admin:devices_app_device_change", args=[device.pk])


def delete_url(device):
    return reverse("admin:devices_app_device_delete", args=[device.pk])


def form_data(site, **overrides):
    data = {
        "device_id": "pos-terminal-009",
        "name": "POS Terminal 9",
        "device_type": "pos_terminal",
        "site": site.pk,
        "status": "online",
        "ip_address": "192.168.3.9",
        "mac_address": "00-1b-44-11-3a-b9",
        "firmware_version": "4.2.1",
        "config": json.dumps({"gateway_url": "https://payments.example.com"}),
        "_save": "Save",
    }
    data.update(overrides)
    return data


def listed(response):
    assert response.status_code == 200
    return [device.pk for device in response.context["cl"].result_list]


def site_filter_of(response):
    return next(spec for spec in response.context["cl"].filter_specs if isinstance(spec, SiteListFilter))


@pytest.fixture
def manager_of_a(client):
    """A staff user (not a superuser) who manages site A only, with the device model perms."""
    site_a, site_b = SiteFactory(site_id="site-aaa"), SiteFactory(site_id="site-bbb")
    user = UserFactory(is_staff=True)
    grant_perms(user, "devices_app.view_device", "devices_app.change_device", "devices_app.add_device")
    grant_perms(user, "sites_app.view_site")
    SiteMembershipFactory(user=user, site=site_a, role=MembershipRole.MANAGER)
    client.force_login(user)
    client.site_a, client.site_b = site_a, site_b
    return client


# --- Pages render -----------------------------------------------------------------------------


def test_changelist_shows_site_link_and_status_badge(admin_browser):
    device = DeviceFactory(status=DeviceStatus.OFFLINE)

    response = admin_browser.get(CHANGELIST)

    assert listed(response) == [device.pk]
    site_url = reverse("admin:sites_app_site_change", args=[device.site.pk])
    assert f'<a href="{site_url}">{device.site}</a>' in response.text
    assert '<span class="hp-badge hp-badge--muted">Offline</span>' in response.text


@pytest.mark.parametrize(
    ("term", "found"),
    [("pos-terminal-7", True), ("Harbour", True), ("192.168.77", True), ("no-such-device", False)],
)
def test_search_matches_ids_names_addresses_and_site(admin_browser, term, found):
    device = DeviceFactory(
        device_id="pos-terminal-7", site=SiteFactory(name="Harbour"), ip_address="192.168.77.5"
    )
    DeviceFactory(device_id="card-reader-1", site=SiteFactory(name="Market"), ip_address="10.0.0.1")

    assert listed(admin_browser.get(CHANGELIST, {"q": term})) == ([device.pk] if found else [])


def test_add_and_change_pages_render(admin_browser):
    device = DeviceFactory()

    assert admin_browser.get(ADD).status_code == 200
    response = admin_browser.get(change_url(device))
    assert response.status_code == 200
    assert "Health checks of this device" in response.text


def test_site_filter_narrows_the_list_and_offers_the_sites(admin_browser):
    here, there = DeviceFactory(), DeviceFactory()

    response = admin_browser.get(CHANGELIST, {"site": here.site.pk})

    assert listed(response) == [here.pk]
    site_filter = site_filter_of(response)
    assert {label for _, label in site_filter.lookup_choices} == {str(here.site), str(there.site)}


def test_site_filter_lists_a_bounded_number_of_sites_but_still_filters_by_any(admin_browser, monkeypatch):
    monkeypatch.setattr("homepot.admin.SiteListFilter.max_choices", 2)
    devices = [DeviceFactory(site=SiteFactory(site_id=f"site-{n}00")) for n in range(1, 5)]
    last = devices[-1]

    response = admin_browser.get(CHANGELIST, {"site": last.site.pk})

    assert listed(response) == [last.pk]
    site_filter = site_filter_of(response)
    assert [label for _, label in site_filter.lookup_choices] == [
        str(devices[0].site),
        str(devices[1].site),
        str(last.site),
    ]


def test_a_malformed_site_filter_is_not_a_500(admin_browser):
    response = admin_browser.get(CHANGELIST, {"site": "abc"})

    assert response.status_code == 302
    assert response.url.endswith("?e=1")


def test_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    DeviceFactory.create_batch(3)  # each at its own site, so a lazy site lookup would show
    with CaptureQueriesContext(connection) as few:
        assert admin_browser.get(CHANGELIST).status_code == 200
    DeviceFactory.create_batch(27)

    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(CHANGELIST)

    assert len(response.context["cl"].result_list) == 30
    assert len(few) <= 10


def test_changelist_does_not_count_the_whole_table_twice(admin_browser):
    DeviceFactory.create_batch(2)

    with CaptureQueriesContext(connection) as queries:
        admin_browser.get(CHANGELIST, {"status": "online"})

    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert len(counts) == 1


# --- Writes go through the services ---------------------------------------------------------


def test_adding_a_device_writes_one_audit_row_and_stores_the_canonical_mac(admin_browser, admin_user):
    site = SiteFactory()

    response = admin_browser.post(ADD, form_data(site))

    assert response.status_code == 302
    device = Device.objects.get(device_id="pos-terminal-009")
    assert device.mac_address == "00:1B:44:11:3A:B9"
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.DEVICE_CREATED
    assert entry.actor == admin_user
    assert entry.device_id == device.pk
    assert entry.new_values["mac_address"] == "00:1B:44:11:3A:B9"


def test_changing_a_device_writes_one_audit_row_with_before_and_after(admin_browser):
    device = DeviceFactory(device_id="pos-terminal-009", name="POS Terminal 9", status=DeviceStatus.ONLINE)
    data = form_data(
        device.site,
        ip_address=device.ip_address,
        mac_address=device.mac_address,
        config=json.dumps(device.config),
        status="maintenance",
    )

    response = admin_browser.post(change_url(device), data)

    assert response.status_code == 302
    device.refresh_from_db()
    assert device.status == DeviceStatus.MAINTENANCE
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.DEVICE_UPDATED
    assert entry.old_values == {"status": "online"}
    assert entry.new_values == {"status": "maintenance"}


@pytest.mark.parametrize(
    ("field", "value"), [("ip_address", "999.1.1.1"), ("mac_address", "not-a-mac"), ("config", "{oops")]
)
def test_bad_input_is_a_form_error_and_nothing_is_stored(admin_browser, field, value):
    response = admin_browser.post(ADD, form_data(SiteFactory(), **{field: value}))

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Device.objects.exists()
    assert not AuditLog.objects.exists()


def test_a_duplicate_device_id_is_a_form_error(admin_browser):
    existing = DeviceFactory(device_id="pos-terminal-009")

    response = admin_browser.post(ADD, form_data(existing.site, mac_address=""))

    assert response.status_code == 200
    assert "device_id" in response.context["adminform"].form.errors
    assert Device.objects.count() == 1


def test_deleting_a_device_takes_its_health_history_and_writes_one_audit_row(admin_browser):
    device = DeviceFactory(device_id="pos-terminal-009")
    HealthCheckFactory.create_batch(3, device=device)

    page = admin_browser.get(delete_url(device))
    response = admin_browser.post(delete_url(device), {"post": "yes"})

    assert "3 health check(s) of its history" in page.text
    assert response.status_code == 302
    assert not Device.objects.exists()
    assert not HealthCheck.objects.exists()
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.DEVICE_DELETED
    assert entry.device_ref == "pos-terminal-009"


def test_bulk_delete_goes_through_the_service_one_audit_row_each(admin_browser):
    devices = DeviceFactory.create_batch(3)

    response = admin_browser.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [d.pk for d in devices], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Device.objects.exists()
    assert AuditLog.objects.filter(event_type=AuditEvent.DEVICE_DELETED).count() == 3


def test_a_service_refusal_while_saving_becomes_a_message_and_nothing_is_stored(admin_browser, monkeypatch):
    from django.core.exceptions import PermissionDenied

    def refuse(**kwargs):
        raise PermissionDenied("You may not change site site-123.")

    monkeypatch.setattr("devices_app.admin.device_create", refuse)

    response = admin_browser.post(ADD, form_data(SiteFactory()), follow=True)

    assert response.status_code == 200
    assert "You may not change site site-123." in [str(m) for m in response.context["messages"]]
    assert not Device.objects.exists()


# --- Scoping ------------------------------------------------------------------------------------


def test_a_site_manager_sees_only_their_sites_devices(manager_of_a):
    mine = DeviceFactory(site=manager_of_a.site_a)
    DeviceFactory(site=manager_of_a.site_b)

    response = manager_of_a.get(CHANGELIST)

    assert listed(response) == [mine.pk]
    site_filter = site_filter_of(response)
    assert [label for _, label in site_filter.lookup_choices] == [str(manager_of_a.site_a)]


def test_a_site_manager_cannot_open_another_sites_device(manager_of_a):
    theirs = DeviceFactory(site=manager_of_a.site_b)

    response = manager_of_a.get(change_url(theirs))

    assert response.status_code == 302
    assert response.url == reverse("admin:index")


def test_site_autocomplete_lists_only_the_managers_site(manager_of_a):
    response = manager_of_a.get(reverse("admin:autocomplete"), SITE_AUTOCOMPLETE)

    assert response.status_code == 200
    assert [item["id"] for item in response.json()["results"]] == [str(manager_of_a.site_a.pk)]


def test_site_autocomplete_offers_only_sites_the_user_may_change(client):
    managed, viewed = SiteFactory(), SiteFactory()
    user = UserFactory(is_staff=True)
    grant_perms(user, "devices_app.view_device", "devices_app.change_device", "sites_app.view_site")
    SiteMembershipFactory(user=user, site=managed, role=MembershipRole.MANAGER)
    SiteMembershipFactory(user=user, site=viewed, role=MembershipRole.VIEWER)
    client.force_login(user)

    response = client.get(reverse("admin:autocomplete"), SITE_AUTOCOMPLETE)

    assert [item["id"] for item in response.json()["results"]] == [str(managed.pk)]


def test_a_site_manager_cannot_move_a_device_to_another_site(manager_of_a):
    device = DeviceFactory(site=manager_of_a.site_a, device_id="pos-terminal-009")
    data = form_data(manager_of_a.site_b, mac_address=device.mac_address, ip_address=device.ip_address)

    response = manager_of_a.post(change_url(device), data)

    assert response.status_code == 200
    assert "site" in response.context["adminform"].form.errors
    device.refresh_from_db()
    assert device.site == manager_of_a.site_a
    assert not AuditLog.objects.exists()


def test_a_site_manager_adds_a_device_at_their_site(manager_of_a):
    response = manager_of_a.post(ADD, form_data(manager_of_a.site_a))

    assert response.status_code == 302
    assert Device.objects.get().site == manager_of_a.site_a
    assert AuditLog.objects.get().event_type == AuditEvent.DEVICE_CREATED


def test_a_viewer_sees_the_device_read_only_and_cannot_change_it(client):
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    user = UserFactory(is_staff=True)
    grant_perms(user, "devices_app.view_device", "devices_app.change_device")
    SiteMembershipFactory(user=user, site=device.site, role=MembershipRole.VIEWER)
    client.force_login(user)

    page = client.get(change_url(device))
    response = client.post(change_url(device), form_data(device.site, status="error"))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert response.status_code == 403
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE


def test_facet_counts_are_never_computed_on_the_fleet_table(admin_browser):
    DeviceFactory.create_batch(2)
    with CaptureQueriesContext(connection) as plain:
        admin_browser.get(CHANGELIST)

    with CaptureQueriesContext(connection) as with_facets:
        response = admin_browser.get(CHANGELIST, {"_facets": "True"})

    assert response.status_code == 200
    assert len(with_facets) == len(plain)
