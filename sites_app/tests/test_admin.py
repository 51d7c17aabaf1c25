"""The Sites pages of the operator console, driven through the admin client."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from devices_app.choices import DeviceStatus
from devices_app.tests.factories import DeviceFactory
from jobs_app.choices import JobAction
from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.choices import AlertKind, AlertSeverity, AuditEvent, HealthStatus
from monitoring_app.models import Alert, AuditLog
from sites_app.admin import SITE_PAGE_DEVICES, SiteAdmin
from sites_app.models import Site
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:sites_app_site_changelist")
ADD = reverse("admin:sites_app_site_add")


def change_url(site):
    return reverse("admin:sites_app_site_change", args=[site.pk])


def delete_url(site):
    return reverse("admin:sites_app_site_delete", args=[site.pk])


def inline_management(prefix, total=0, initial=0):
    """The management form of one of the site page's inlines (windows, blackouts)."""
    return {
        f"{prefix}-TOTAL_FORMS": str(total),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }


def form_data(**overrides):
    data = {
        "site_id": "site-900",
        "name": "Harbour Street",
        "is_active": "on",
        "location": "1 Harbour Street",
        "region": "Coast",
        "timezone": "Europe/London",
        "description": "",
        "_save": "Save",
        **inline_management("maintenance_windows"),
        **inline_management("blackouts"),
    }
    data.update(overrides)
    return data


def staff_user(*, site, role=MembershipRole.MANAGER, perms=()):
    """A store's staff member: the role alone decides their permissions unless `perms` adds some."""
    user = UserFactory(is_staff=True)
    grant_perms(user, *(f"sites_app.{perm}" for perm in perms))
    SiteMembershipFactory(user=user, site=site, role=role)
    return user


# --- Pages render -----------------------------------------------------------------------------


def test_changelist_shows_each_sites_device_count_linked_to_its_devices(admin_browser):
    busy = SiteFactory(site_id="site-123")
    SiteFactory(site_id="site-456")
    DeviceFactory.create_batch(3, site=busy)

    response = admin_browser.get(CHANGELIST)

    assert response.status_code == 200
    counts = {site.site_id: site.device_count for site in response.context["cl"].result_list}
    assert counts == {"site-123": 3, "site-456": 0}
    devices_url = reverse("admin:devices_app_device_changelist")
    assert f'href="{devices_url}?site={busy.pk}">3</a>' in response.text


def test_changelist_sorts_by_device_count(admin_browser):
    few, many = SiteFactory(), SiteFactory()
    DeviceFactory(site=few)
    DeviceFactory.create_batch(4, site=many)
    column = ["action_checkbox", *SiteAdmin.list_display].index("device_count_link")

    response = admin_browser.get(CHANGELIST, {"o": f"-{column}"})

    assert response.status_code == 200
    assert [site.pk for site in response.context["cl"].result_list] == [many.pk, few.pk]


@pytest.mark.parametrize(("term", "found"), [("harbour", True), ("nowhere-at-all", False)])
def test_search_matches_name_and_site_id(admin_browser, term, found):
    site = SiteFactory(name="Harbour Street")
    SiteFactory(name="Market Square")

    response = admin_browser.get(CHANGELIST, {"q": term})

    assert response.status_code == 200
    assert [s.pk for s in response.context["cl"].result_list] == ([site.pk] if found else [])


def test_add_and_change_pages_render(admin_browser):
    site = SiteFactory()
    DeviceFactory(site=site)

    assert admin_browser.get(ADD).status_code == 200
    response = admin_browser.get(change_url(site))
    assert response.status_code == 200
    assert "Jobs of this site" in response.text


def test_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    for site in SiteFactory.create_batch(3):
        DeviceFactory(site=site)
    with CaptureQueriesContext(connection) as few:
        assert admin_browser.get(CHANGELIST).status_code == 200
    for site in SiteFactory.create_batch(27):
        DeviceFactory(site=site)

    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(CHANGELIST)

    assert len(response.context["cl"].result_list) == 30
    assert len(few) <= 10


# --- Writes go through the services ---------------------------------------------------------


def test_adding_a_site_writes_one_audit_row(admin_browser, admin_user):
    response = admin_browser.post(ADD, form_data())

    assert response.status_code == 302
    site = Site.objects.get(site_id="site-900")
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.SITE_CREATED
    assert entry.actor == admin_user
    assert entry.site_id == site.pk
    assert entry.new_values["name"] == "Harbour Street"


def test_changing_a_site_writes_one_audit_row_with_before_and_after(admin_browser):
    site = SiteFactory(
        site_id="site-900", name="Old Harbour", location="1 Harbour Street", region="Coast", description=""
    )

    response = admin_browser.post(change_url(site), form_data(name="New Harbour"))

    assert response.status_code == 302
    site.refresh_from_db()
    assert site.name == "New Harbour"
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.SITE_UPDATED
    assert entry.old_values == {"name": "Old Harbour"}
    assert entry.new_values == {"name": "New Harbour"}


def test_invalid_site_is_refused_with_a_form_error_and_nothing_stored(admin_browser):
    response = admin_browser.post(ADD, form_data(site_id="not a valid id!", timezone="Mars/Olympus"))

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "site_id" in errors
    assert "timezone" in errors
    assert not Site.objects.exists()
    assert not AuditLog.objects.exists()


def test_deleting_a_site_with_devices_shows_an_error_and_deletes_nothing(admin_browser):
    site = SiteFactory(site_id="site-123")
    DeviceFactory.create_batch(2, site=site)

    page = admin_browser.get(delete_url(site))
    response = admin_browser.post(delete_url(site), {"post": "yes"})

    assert "site-123 still has 2 device(s)" in page.text
    assert response.status_code == 200
    assert "site-123 still has 2 device(s)" in response.text
    assert Site.objects.filter(pk=site.pk).exists()
    assert not AuditLog.objects.exists()


def test_bulk_delete_refuses_sites_with_devices_and_deletes_nothing(admin_browser):
    busy, empty = SiteFactory(site_id="site-123"), SiteFactory(site_id="site-456")
    DeviceFactory(site=busy)

    response = admin_browser.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [busy.pk, empty.pk], "post": "yes"},
    )

    assert response.status_code == 200
    assert "site-123 still has 1 device(s)" in response.text
    assert Site.objects.count() == 2
    assert not AuditLog.objects.exists()


def test_deleting_an_empty_site_goes_through_the_service(admin_browser):
    site = SiteFactory(site_id="site-123")

    response = admin_browser.post(delete_url(site), {"post": "yes"})

    assert response.status_code == 302
    assert not Site.objects.filter(pk=site.pk).exists()
    entry = AuditLog.objects.get()
    assert entry.event_type == AuditEvent.SITE_DELETED
    assert entry.site_ref == "site-123"


def test_bulk_delete_of_empty_sites_writes_one_audit_row_each(admin_browser):
    sites = SiteFactory.create_batch(2)

    response = admin_browser.post(
        CHANGELIST,
        {"action": "delete_selected", "_selected_action": [s.pk for s in sites], "post": "yes"},
    )

    assert response.status_code == 302
    assert not Site.objects.exists()
    assert AuditLog.objects.filter(event_type=AuditEvent.SITE_DELETED).count() == 2


def test_a_service_refusal_while_deleting_becomes_a_message_not_a_500(admin_browser, monkeypatch):
    from homepot.errors import Conflict

    def refuse(**kwargs):
        raise Conflict("The site is busy.")

    monkeypatch.setattr("sites_app.admin.site_delete", refuse)
    site = SiteFactory()

    response = admin_browser.post(delete_url(site), {"post": "yes"}, follow=True)

    assert response.status_code == 200
    assert "The site is busy." in [str(m) for m in response.context["messages"]]
    assert Site.objects.filter(pk=site.pk).exists()


# --- Scoping ------------------------------------------------------------------------------------


def test_a_site_manager_sees_only_their_site_read_only(client):
    mine, other = SiteFactory(site_id="site-123", name="Harbour"), SiteFactory(site_id="site-456")
    client.force_login(staff_user(site=mine))

    listed = client.get(CHANGELIST)
    others_page = client.get(change_url(other))
    own_page = client.get(change_url(mine))
    response = client.post(change_url(mine), form_data(site_id="site-123", name="Renamed"))

    assert [s.pk for s in listed.context["cl"].result_list] == [mine.pk]
    assert others_page.status_code == 302  # "does not exist" for rows out of scope
    assert own_page.context["has_change_permission"] is False  # the site record is head office's
    assert client.get(ADD).status_code == 403
    assert client.get(delete_url(mine)).status_code == 403
    assert response.status_code == 403
    mine.refresh_from_db()
    assert mine.name == "Harbour"
    assert not AuditLog.objects.exists()


def test_a_manager_given_change_site_by_hand_is_still_refused_by_the_service(client):
    mine = SiteFactory(site_id="site-123", name="Harbour")
    client.force_login(staff_user(site=mine, perms=("change_site",)))

    response = client.post(change_url(mine), form_data(site_id="site-123", name="Renamed"), follow=True)

    assert "Only administrators may change sites." in response.content.decode()
    mine.refresh_from_db()
    assert mine.name == "Harbour"
    assert not AuditLog.objects.exists()


def test_a_site_viewer_gets_a_read_only_page_and_cannot_post(client):
    site = SiteFactory(site_id="site-123", name="Harbour")
    client.force_login(staff_user(site=site, role=MembershipRole.VIEWER))

    page = client.get(change_url(site))
    response = client.post(change_url(site), form_data(site_id="site-123", name="Renamed"))

    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert response.status_code == 403
    site.refresh_from_db()
    assert site.name == "Harbour"


# --- Health on the list, and the site page ----------------------------------------------------


def action_url(site, name):
    return reverse("admin:sites_app_site_object_action", args=[site.pk, name])


def test_the_list_shows_each_sites_health_as_a_coloured_online_count(admin_browser):
    fine, shaky, down, empty = (SiteFactory(site_id=f"site-{n}") for n in (1, 2, 3, 4))
    DeviceFactory.create_batch(2, site=fine, status=DeviceStatus.ONLINE)
    DeviceFactory(site=fine, status=DeviceStatus.MAINTENANCE)  # not monitored: not counted
    DeviceFactory.create_batch(3, site=shaky, status=DeviceStatus.ONLINE)
    DeviceFactory(site=shaky, status=DeviceStatus.OFFLINE)
    DeviceFactory.create_batch(2, site=down, status=DeviceStatus.OFFLINE)

    response = admin_browser.get(CHANGELIST)

    assert 'hp-badge--ok" title="2 online, 0 offline, 1 in maintenance;' in response.text
    assert ">2/2 online</span>" in response.text
    assert 'hp-badge--warn" title="3 online, 1 offline' in response.text
    assert ">3/4 online</span>" in response.text
    assert 'hp-badge--bad" title="0 online, 2 offline' in response.text
    assert '<span class="hp-badge hp-badge--muted">no device reporting</span>' in response.text


def test_the_site_page_shows_health_devices_alerts_and_jobs(admin_browser):
    site = SiteFactory()
    offline = DeviceFactory(site=site, status=DeviceStatus.OFFLINE)
    DeviceFactory(site=site, status=DeviceStatus.ONLINE, health_status=HealthStatus.DEGRADED)
    now = timezone.now()
    alert = Alert.objects.create(
        site=site,
        device=offline,
        kind=AlertKind.DEVICE_OFFLINE,
        severity=AlertSeverity.CRITICAL,
        message="Till 1 has been offline for 10 minutes",
        opened_at=now,
        last_seen_at=now,
    )
    job = JobFactory(site=site, action=JobAction.UPDATE_CONFIG)

    response = admin_browser.get(change_url(site))

    assert response.status_code == 200
    text = response.text
    assert ">1/2 online</span> of 2 devices" in text
    assert '<span class="hp-badge hp-badge--warn">1 degraded</span>' in text
    # Worst first, linked, with the way to the whole filtered list.
    device_url = reverse("admin:devices_app_device_change", args=[offline.pk])
    assert text.index(f'<a href="{device_url}">{offline.device_id}</a>') < text.index(
        'hp-badge--warn">Degraded'
    )
    assert f'href="{reverse("admin:devices_app_device_changelist")}?site={site.pk}">All 2 device(s)' in text
    assert reverse("admin:monitoring_app_alert_change", args=[alert.pk]) in text
    assert f"?site={site.pk}&amp;state=open" in text
    assert (
        f'<a href="{reverse("admin:jobs_app_job_change", args=[job.pk])}">#{job.pk} Update configuration</a>'
        in text
    )
    # Push a configuration: the job form, pre-filled with this site.
    assert f'href="{reverse("admin:jobs_app_job_add")}?site={site.pk}">Push a configuration</a>' in text
    assert f'href="{action_url(site, "health-check")}">Run health check on all devices</a>' in text


def test_the_site_page_lists_a_bounded_number_of_devices_in_bounded_queries(
    admin_browser, django_assert_max_num_queries
):
    site = SiteFactory()
    DeviceFactory.create_batch(2, site=site)
    with CaptureQueriesContext(connection) as few:
        admin_browser.get(change_url(site))
    DeviceFactory.create_batch(SITE_PAGE_DEVICES + 5, site=site)

    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(change_url(site))

    assert f"The {SITE_PAGE_DEVICES} most in need of attention are shown; all {SITE_PAGE_DEVICES + 7}" in (
        response.text
    )


def test_a_manager_runs_a_health_check_on_all_devices_after_confirming(client):
    site = SiteFactory()
    DeviceFactory.create_batch(2, site=site)
    user = staff_user(site=site)
    client.force_login(user)

    confirm = client.get(action_url(site, "health-check"))
    assert not Job.objects.exists()  # a GET only asks
    response = client.post(action_url(site, "health-check"), follow=True)

    assert confirm.status_code == 200
    assert "every device of this site" in confirm.text
    job = Job.objects.get()
    assert (job.action, job.site, job.created_by, job.segment) == (JobAction.HEALTH_CHECK, site, user, {})
    assert not job.target_devices.exists()  # the whole site
    entry = AuditLog.objects.get()
    assert (entry.event_type, entry.actor) == (AuditEvent.JOB_CREATED, user)
    assert f"Job #{job.pk} (health check) created for every device of {site.site_id}." in response.text


def test_a_viewer_sees_no_buttons_on_the_site_page_and_cannot_run_them(client):
    site = SiteFactory()
    client.force_login(staff_user(site=site, role=MembershipRole.VIEWER))

    page = client.get(change_url(site))
    response = client.post(action_url(site, "health-check"))

    assert "Push a configuration" not in page.text
    assert "/actions/" not in page.text
    assert response.status_code == 403
    assert not Job.objects.exists()
    assert not AuditLog.objects.exists()


def test_another_sites_health_check_is_not_found(client):
    mine, other = SiteFactory(), SiteFactory()
    client.force_login(staff_user(site=mine))

    response = client.post(action_url(other, "health-check"))

    assert response.status_code == 404
    assert not Job.objects.exists()
