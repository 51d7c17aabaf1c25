"""The Devices pages of the operator console, driven through the admin client."""

import datetime
import json

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext, override_script_prefix
from django.urls import reverse
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.choices import DeviceStatus
from devices_app.models import Device, DeviceCredential
from devices_app.tests.factories import DeviceCredentialFactory, DeviceFactory
from homepot.admin import SiteListFilter
from jobs_app.choices import DeliveryStatus
from jobs_app.models import Job
from jobs_app.tests.factories import DeliveryFactory
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
    # The short site id keeps the column narrow; the name is one click away.
    assert f'<a href="{site_url}">{device.site.site_id}</a>' in response.text
    assert '<span class="hp-badge hp-badge--muted">Offline</span>' in response.text


def test_each_row_has_the_checkbox_and_links_django_would_render(admin_browser):
    # The rows are written without Django's per-row widget templates and reverse() calls
    # (homepot.admin.ConsoleListMixin); the operator gets the same HTML: Django's own
    # checkbox (its name escaped for screen readers) and links that keep the list's filter.
    device = DeviceFactory(name='Till "A" <front> & back')

    response = admin_browser.get(CHANGELIST + "?status__exact=online")

    djangos_checkbox = admin.ModelAdmin.action_checkbox(admin.site.get_model_admin(Device), device)
    assert djangos_checkbox in response.text
    link = f'<a href="{change_url(device)}?_changelist_filters=status__exact%3Donline">'
    assert response.text.count(link) == 2  # the device ID and the name


def test_row_links_keep_the_prefix_the_console_is_served_under(admin_browser):
    device = DeviceFactory()

    admin_browser.get(CHANGELIST)  # the links of the unprefixed list are remembered first
    with override_script_prefix("/hq/"):  # what the WSGI handler sets from SCRIPT_NAME
        response = admin_browser.get(CHANGELIST)

    assert f'href="/hq/admin/devices_app/device/{device.pk}/change/' in response.text
    assert f'href="/hq/admin/sites_app/site/{device.site.pk}/change/"' in response.text


@pytest.mark.parametrize(
    ("term", "found"),
    [
        ("pos-terminal-7", True),  # the whole device ID
        ("terminal-7", True),  # any part of it, from 3 characters
        ("TERMINAL", True),  # in any case
        ("po", True),  # 1-2 characters: the start of the ID or name
        ("os", False),  # ... not the middle
        ("front till", True),  # every word must match: name words
        ("till reader", False),
        ("192.168.77", True),  # the first whole octets of the IP address
        ("192.168.77.5", True),
        ("192.168.7", False),  # octets are whole
        ("00-1b-44-11-3a-b9", True),  # the MAC address in any spelling
        ("site-harbour", True),  # a site's exact ID lists its devices
        ("Harbour", False),  # a site's name is not searched (the site filter is)
        ("no-such-device", False),
    ],
)
def test_search_matches_ids_names_addresses_and_site(admin_browser, term, found):
    device = DeviceFactory(
        device_id="pos-terminal-7",
        name="Front till",
        site=SiteFactory(site_id="site-harbour", name="Harbour"),
        ip_address="192.168.77.5",
        mac_address="00:1B:44:11:3A:B9",
    )
    DeviceFactory(
        device_id="card-reader-1", name="Reader", site=SiteFactory(name="Market"), ip_address="10.0.0.1"
    )

    assert listed(admin_browser.get(CHANGELIST, {"q": term})) == ([device.pk] if found else [])


def test_a_searched_list_is_counted_exactly_up_to_its_own_bound(admin_browser, monkeypatch):
    site = SiteFactory()
    for n in range(5):
        DeviceFactory(device_id=f"printer-{n}", site=site, status="online")
    DeviceFactory(device_id="till-1", site=site, status="online")
    model_admin = admin.site._registry[Device]
    # Pages of 2: the first page is full, so the list is counted (a page or less is not).
    monkeypatch.setattr(model_admin, "list_per_page", 2)

    exact = admin_browser.get(CHANGELIST, {"q": "printer"})
    monkeypatch.setattr(model_admin, "search_count_at_most", 2)
    with CaptureQueriesContext(connection) as searched:
        big = admin_browser.get(CHANGELIST, {"q": "printer"})
    with CaptureQueriesContext(connection) as filtered:
        unsearched = admin_browser.get(CHANGELIST, {"status__exact": "online"})

    def count_sql(queries):
        return [q["sql"] for q in queries.captured_queries if "COUNT(*)" in q["sql"].upper()]

    assert exact.context["cl"].result_count == 5  # under the bound: exact
    # Over the search's bound: the count stopped at 3 rows and showed the planner's estimate
    # (at least 3); the first page lists the first two matches.
    assert big.context["cl"].result_count >= 3
    assert [d.device_id for d in big.context["cl"].result_list] == ["printer-0", "printer-1"]
    assert len(count_sql(searched)) == 1 and "LIMIT 3" in count_sql(searched)[0]
    # A list filtered without a search keeps the paginator's own bound, and its exact count.
    assert unsearched.context["cl"].result_count == 6
    assert len(count_sql(filtered)) == 1 and "LIMIT 10001" in count_sql(filtered)[0]


def test_a_search_that_fits_one_page_reads_the_fleet_once(admin_browser, monkeypatch):
    """The first page is read with one row past it: when that is all there is, it is the
    list and its count, with no second read; a fuller list is counted, its first page not
    read again; later pages as before."""
    site = SiteFactory()
    for n in range(5):
        DeviceFactory(device_id=f"printer-{n}", site=site)
    DeviceFactory(device_id="till-1", site=site)
    model_admin = admin.site._registry[Device]

    def device_reads(queries):
        return [q["sql"] for q in queries.captured_queries if 'FROM "devices_app_device"' in q["sql"]]

    with CaptureQueriesContext(connection) as small:
        fits = admin_browser.get(CHANGELIST, {"q": "printer"})
    assert fits.context["cl"].result_count == 5
    assert listed(fits) == sorted(d.pk for d in Device.objects.filter(device_id__startswith="printer"))
    assert len(device_reads(small)) == 1 and "COUNT(" not in device_reads(small)[0].upper()

    monkeypatch.setattr(model_admin, "list_per_page", 2)
    with CaptureQueriesContext(connection) as full:
        first = admin_browser.get(CHANGELIST, {"q": "printer"})
    reads = device_reads(full)  # now: each request starts Django's query log afresh
    second = admin_browser.get(CHANGELIST, {"q": "printer", "p": "2"})
    everything = admin_browser.get(CHANGELIST, {"q": "printer", "all": ""})
    assert first.context["cl"].result_count == second.context["cl"].result_count == 5
    assert [d.device_id for d in first.context["cl"].result_list] == ["printer-0", "printer-1"]
    assert [d.device_id for d in second.context["cl"].result_list] == ["printer-2", "printer-3"]
    assert len(everything.context["cl"].result_list) == 5
    assert len(reads) == 2 and sum("COUNT(" in sql.upper() for sql in reads) == 1
    # The rows shown are held by the list's queryset, as Django's changelist gives it.
    for response in (fits, first):
        shown = response.context["cl"].result_list
        assert list(shown.values_list("pk", flat=True)) == [d.pk for d in shown]


def test_search_finds_only_the_managers_own_devices(manager_of_a):
    mine = DeviceFactory(device_id="pos-terminal-1", site=manager_of_a.site_a)
    DeviceFactory(device_id="pos-terminal-2", site=manager_of_a.site_b)

    assert listed(manager_of_a.get(CHANGELIST, {"q": "pos-terminal"})) == [mine.pk]
    assert listed(manager_of_a.get(CHANGELIST, {"q": "site-bbb"})) == []


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
    # Two devices fit the first page, which is read with one row past it: no count at all.
    # (A fuller list is counted once: test_a_search_that_fits_one_page_reads_the_fleet_once.)
    assert counts == []


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
    device = DeviceFactory(device_id="pos-terminal-009", name="POS Terminal 9", firmware_version="4.2.0")
    data = form_data(
        device.site,
        ip_address=device.ip_address,
        mac_address=device.mac_address,
        config=json.dumps(device.config),
        firmware_version="4.2.1",
    )

    response = admin_browser.post(change_url(device), data)

    assert response.status_code == 302
    device.refresh_from_db()
    assert device.firmware_version == "4.2.1"
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.DEVICE_UPDATED
    assert entry.old_values == {"firmware_version": "4.2.0"}
    assert entry.new_values == {"firmware_version": "4.2.1"}


def test_the_status_is_not_a_form_field_a_posted_status_is_ignored(admin_browser):
    device = DeviceFactory(device_id="pos-terminal-009", name="POS Terminal 9", status=DeviceStatus.ONLINE)
    data = form_data(
        device.site,
        ip_address=device.ip_address,
        mac_address=device.mac_address,
        config=json.dumps(device.config),
        firmware_version=device.firmware_version,
        status="error",
    )

    page = admin_browser.get(change_url(device))
    response = admin_browser.post(change_url(device), data)

    assert 'name="status"' not in page.text
    assert '<span class="hp-badge hp-badge--ok">Online</span>' in page.text
    assert response.status_code == 302
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE
    assert not AuditLog.objects.exists()


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


# --- The device page: state, history and buttons -----------------------------------------------


def action_url(device, name):
    return reverse("admin:devices_app_device_object_action", args=[device.pk, name])


def manager_of(site):
    """A store manager: the role alone gives the device and job permissions."""
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    return user


def test_the_device_page_shows_last_seen_in_store_time_a_sparkline_and_recent_deliveries(admin_browser):
    device = DeviceFactory(
        site=SiteFactory(timezone="Europe/Paris"),
        last_seen=datetime.datetime(2026, 7, 1, 10, 0, tzinfo=datetime.UTC),
    )
    for minute, status in enumerate(("healthy", "degraded", "unhealthy")):
        HealthCheckFactory(
            device=device,
            status=status,
            response_time_ms=100 + minute,
            checked_at=datetime.datetime(2026, 7, 1, 9, minute, tzinfo=datetime.UTC),
        )
    delivery = DeliveryFactory(device=device, job__site=device.site, status=DeliveryStatus.COMPLETED)

    response = admin_browser.get(change_url(device))

    assert response.status_code == 200
    assert "2026-07-01 12:00:00 CEST (Europe/Paris, store time)" in response.text
    assert response.text.count("<circle") == 3
    assert "last 3 reports: 1 healthy, 2 not; slowest 102 ms" in response.text
    job_url = reverse("admin:jobs_app_job_change", args=[delivery.job_id])
    assert f'<a href="{job_url}">#{delivery.job_id}</a>' in response.text
    assert '<span class="hp-badge hp-badge--ok">Completed</span>' in response.text


def test_the_device_page_queries_do_not_grow_with_its_history(admin_browser, django_assert_max_num_queries):
    device = DeviceFactory()

    def history(n):
        for _ in range(n):
            HealthCheckFactory(device=device)
            DeliveryFactory(device=device, job__site=device.site)

    history(1)
    with CaptureQueriesContext(connection) as few:
        admin_browser.get(change_url(device))
    history(40)
    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(change_url(device))
    assert response.text.count("<circle") == 30  # bounded: SPARKLINE_CHECKS


def test_the_device_list_says_how_long_ago_a_device_was_seen(admin_browser):
    DeviceFactory(last_seen=timezone.now() - datetime.timedelta(minutes=3))
    DeviceFactory(last_seen=None)

    response = admin_browser.get(CHANGELIST)

    assert "3\xa0minutes ago" in response.text
    assert "never" in response.text


@pytest.mark.parametrize(
    ("name", "action"), [("restart-pos-app", "restart_pos_app"), ("health-check", "health_check")]
)
def test_a_manager_creates_a_job_for_one_device_after_confirming(client, name, action):
    device = DeviceFactory()
    user = manager_of(device.site)
    client.force_login(user)

    page = client.get(change_url(device))
    confirm = client.get(action_url(device, name))
    assert not Job.objects.exists()  # a GET only asks
    response = client.post(action_url(device, name))

    assert f'href="{action_url(device, name)}"' in page.text
    assert confirm.status_code == 200
    assert "this device only" in confirm.text
    assert response.status_code == 302
    assert response.url == change_url(device)
    job = Job.objects.get()
    assert (job.action, job.site, job.created_by) == (action, device.site, user)
    assert list(job.target_devices.all()) == [device]
    entry = AuditLog.objects.get()
    assert (entry.event_type, entry.actor) == (AuditEvent.JOB_CREATED, user)
    assert f"Job #{job.pk}" in client.get(change_url(device)).text


def test_rotating_the_credential_shows_the_new_secret_once_and_revokes_the_old(client):
    old = DeviceCredentialFactory()
    device = old.device
    client.force_login(manager_of(device.site))

    response = client.post(action_url(device, "rotate-credential"), follow=True)

    old.refresh_from_db()
    assert old.revoked_at is not None
    new = DeviceCredential.objects.get(device=device, revoked_at__isnull=True)
    assert f"Credential of {device.device_id}: {new.key_prefix}" in response.text
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.DEVICE_CREDENTIAL_ISSUED


def test_revoking_the_credential_locks_the_device_out_and_is_audited(client):
    credential = DeviceCredentialFactory()
    device = credential.device
    client.force_login(manager_of(device.site))

    response = client.post(action_url(device, "revoke-credential"), follow=True)

    credential.refresh_from_db()
    assert credential.revoked_at is not None
    assert "revoked: it is locked out" in response.text
    assert AuditLog.objects.get().event_type == AuditEvent.DEVICE_CREDENTIAL_REVOKED


def test_maintenance_is_started_and_ended_by_buttons_each_audited(client):
    device = DeviceFactory(status=DeviceStatus.ONLINE)
    client.force_login(manager_of(device.site))

    page = client.get(change_url(device))
    assert action_url(device, "maintenance-on") in page.text
    assert action_url(device, "maintenance-off") not in page.text
    assert client.get(action_url(device, "maintenance-off")).status_code == 403

    client.post(action_url(device, "maintenance-on"))
    device.refresh_from_db()
    assert device.status == DeviceStatus.MAINTENANCE
    page = client.get(change_url(device))
    assert action_url(device, "maintenance-off") in page.text

    client.post(action_url(device, "maintenance-off"))
    device.refresh_from_db()
    # Offline until its next report brings it back online.
    assert device.status == DeviceStatus.OFFLINE
    changes = [(e.old_values, e.new_values) for e in AuditLog.objects.order_by("id")]
    assert changes == [
        ({"status": "online"}, {"status": "maintenance"}),
        ({"status": "maintenance"}, {"status": "offline"}),
    ]


def test_a_viewer_sees_no_buttons_and_cannot_run_them(client):
    credential = DeviceCredentialFactory()
    device = credential.device
    user = UserFactory(is_staff=True)
    SiteMembershipFactory(user=user, site=device.site, role=MembershipRole.VIEWER)
    client.force_login(user)

    page = client.get(change_url(device))
    answers = [
        client.post(action_url(device, name)).status_code
        for name in (
            "restart-pos-app",
            "health-check",
            "rotate-credential",
            "revoke-credential",
            "maintenance-on",
        )
    ]

    assert page.status_code == 200
    assert "/actions/" not in page.text
    assert answers == [403] * 5
    assert not Job.objects.exists()
    credential.refresh_from_db()
    assert credential.revoked_at is None
    assert not AuditLog.objects.exists()


def test_another_sites_device_is_not_found_through_its_buttons(manager_of_a):
    other = DeviceFactory(site=manager_of_a.site_b)

    response = manager_of_a.post(action_url(other, "restart-pos-app"))

    assert response.status_code == 404
    assert not Job.objects.exists()


def test_an_unknown_button_is_not_found(admin_browser):
    assert admin_browser.get(action_url(DeviceFactory(), "self-destruct")).status_code == 404
