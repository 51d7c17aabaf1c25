"""The Jobs pages of the operator console, driven through the admin client."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms
from jobs_app.choices import JobStatus
from jobs_app.models import Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:jobs_app_job_changelist")
ADD = reverse("admin:jobs_app_job_add")


def change_url(job):
    return reverse("admin:jobs_app_job_change", args=[job.pk])


def form_data(site, **overrides):
    data = {
        "site": site.pk,
        "action": "update_pos_payment_config",
        "priority": "high",
        "description": "Switch payment gateway",
        "p__update_pos_payment_config__gateway_url": "https://payments-v2.example.com",
        "status": "queued",
        "started_at_0": "",
        "started_at_1": "",
        "completed_at_0": "",
        "completed_at_1": "",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def listed(response):
    assert response.status_code == 200
    return [job.pk for job in response.context["cl"].result_list]


def test_changelist_shows_status_and_target_site(admin_browser):
    job = JobFactory(status=JobStatus.FAILED)

    response = admin_browser.get(CHANGELIST)

    assert listed(response) == [job.pk]
    site_url = reverse("admin:sites_app_site_change", args=[job.site.pk])
    assert f'<a href="{site_url}">{job.site}</a>' in response.text
    assert '<span class="hp-badge hp-badge--bad">Failed</span>' in response.text


@pytest.mark.parametrize(("term", "found"), [("gateway", True), ("site-777", True), ("firmware-xyz", False)])
def test_search_matches_description_and_site(admin_browser, term, found):
    job = JobFactory(description="Switch payment gateway", site=SiteFactory(site_id="site-777"))
    JobFactory(description="Restart tills", site=SiteFactory(site_id="site-888"))

    assert listed(admin_browser.get(CHANGELIST, {"q": term})) == ([job.pk] if found else [])


def test_filters_by_status_and_site(admin_browser):
    queued = JobFactory(status=JobStatus.QUEUED)
    JobFactory(status=JobStatus.COMPLETED)

    assert listed(admin_browser.get(CHANGELIST, {"status__exact": "queued"})) == [queued.pk]
    assert listed(admin_browser.get(CHANGELIST, {"site": queued.site.pk})) == [queued.pk]


def test_add_and_change_pages_render(admin_browser):
    job = JobFactory()

    assert admin_browser.get(ADD).status_code == 200
    assert admin_browser.get(change_url(job)).status_code == 200


def test_changelist_queries_do_not_grow_with_rows(admin_browser, django_assert_max_num_queries):
    JobFactory.create_batch(3)  # each with its own site and creator
    with CaptureQueriesContext(connection) as few:
        assert admin_browser.get(CHANGELIST).status_code == 200
    JobFactory.create_batch(27)

    with django_assert_max_num_queries(len(few)):
        response = admin_browser.get(CHANGELIST)

    assert len(response.context["cl"].result_list) == 30
    assert len(few) <= 10


def test_adding_a_job_records_who_created_it(admin_browser, admin_user):
    site = SiteFactory()

    response = admin_browser.post(ADD, form_data(site))

    assert response.status_code == 302
    job = Job.objects.get()
    assert job.created_by == admin_user
    assert job.site == site
    assert job.payload == {"gateway_url": "https://payments-v2.example.com"}


def test_adding_a_job_writes_one_audit_row_and_queues_it(admin_browser, admin_user):
    site = SiteFactory()

    admin_browser.post(ADD, form_data(site, status="completed"))  # progress is not typed in

    job = Job.objects.get()
    assert job.status == JobStatus.QUEUED
    log = AuditLog.objects.get()
    assert (log.event_type, log.actor, log.job_id, log.site_ref) == (
        "job.created",
        admin_user,
        job.pk,
        site.site_id,
    )


@pytest.mark.parametrize("status", [JobStatus.SENT, JobStatus.COMPLETED, JobStatus.PAUSED])
def test_a_job_that_has_started_is_read_only(admin_browser, status):
    job = JobFactory(status=status, payload={"gateway_url": "https://old.example.com"}, priority="low")

    page = admin_browser.get(change_url(job)).content.decode()
    assert 'name="_save"' not in page and 'name="priority"' not in page and 'name="action"' not in page
    # The settings under their labels, the URL a link.
    assert '<dt>Gateway URL</dt><dd><a href="https://old.example.com"' in page

    admin_browser.post(
        change_url(job),
        form_data(
            job.site, payload=json.dumps({"gateway_url": "https://new.example.com"}), priority="critical"
        ),
    )
    job.refresh_from_db()
    assert (job.payload, job.priority) == ({"gateway_url": "https://old.example.com"}, "low")
    assert not AuditLog.objects.exists()


def test_a_queued_job_may_still_be_edited(admin_browser):
    job = JobFactory(status=JobStatus.QUEUED)
    page = admin_browser.get(change_url(job)).content.decode()
    assert 'name="_save"' in page and 'name="priority"' in page


def test_cancel_action_cancels_unfinished_jobs_and_reports_finished_ones(admin_browser):
    queued, done = JobFactory(status=JobStatus.QUEUED), JobFactory(status=JobStatus.COMPLETED)

    response = admin_browser.post(
        CHANGELIST, {"action": "cancel_jobs", "_selected_action": [queued.pk, done.pk]}, follow=True
    )

    page = response.content.decode()
    assert "Cancelled 1 job(s)." in page and "already completed" in page
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.status, done.status) == (JobStatus.CANCELLED, JobStatus.COMPLETED)
    assert list(AuditLog.objects.values_list("event_type", flat=True)) == ["job.cancelled"]


def test_jobs_cannot_be_deleted(admin_browser):
    job = JobFactory()
    assert admin_browser.get(reverse("admin:jobs_app_job_delete", args=[job.pk])).status_code == 403
    assert Job.objects.filter(pk=job.pk).exists()


def test_a_site_manager_sees_and_targets_only_their_site(client):
    mine, other = SiteFactory(), SiteFactory()
    own_job = JobFactory(site=mine)
    JobFactory(site=other)
    user = UserFactory(is_staff=True)
    grant_perms(user, "jobs_app.view_job", "jobs_app.add_job", "jobs_app.change_job")
    SiteMembershipFactory(user=user, site=mine, role=MembershipRole.MANAGER)
    client.force_login(user)

    assert listed(client.get(CHANGELIST)) == [own_job.pk]
    refused = client.post(ADD, form_data(other))
    assert refused.status_code == 200
    assert "site" in refused.context["adminform"].form.errors
    assert client.post(ADD, form_data(mine)).status_code == 302
    assert Job.objects.filter(site=mine).count() == 2
    assert Job.objects.filter(site=other).count() == 1


def test_adding_a_job_with_targets_and_policy(admin_browser):
    from devices_app.tests.factories import DeviceFactory

    site, extra = SiteFactory(), SiteFactory()
    picked = DeviceFactory(site=extra)
    response = admin_browser.post(
        ADD,
        form_data(
            site,
            extra_sites=[extra.pk],
            target_devices=[picked.pk],
            segment=json.dumps({"device_type": ["pos_terminal"]}),
            batch_size="50",
            max_in_flight_per_site="2",
            failure_threshold_percent="10",
            ttl="00:10:00",
        ),
    )

    assert response.status_code == 302
    job = Job.objects.get()
    assert list(job.extra_sites.all()) == [extra] and list(job.target_devices.all()) == [picked]
    assert (job.batch_size, job.max_in_flight_per_site, job.segment) == (
        50,
        2,
        {"device_type": ["pos_terminal"]},
    )
    assert list(AuditLog.objects.values_list("event_type", flat=True)) == ["job.created"]


def test_job_page_shows_progress_and_a_bounded_list_of_deliveries(admin_browser, admin_user):
    from devices_app.tests.factories import DeviceFactory
    from jobs_app import dispatch, services

    site = SiteFactory()
    DeviceFactory.create_batch(25, site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    dispatch.dispatch_pass(job.pk)

    page = admin_browser.get(change_url(job)).content.decode()
    assert "0 of 25 devices completed (0 %)" in page
    assert '<span class="hp-badge hp-badge--info">Sent</span> 25' in page
    assert page.count('<td><span class="hp-badge hp-badge--info">Sent</span></td>') == 20
    assert "<progress" in admin_browser.get(CHANGELIST).content.decode()


def test_pause_resume_retry_and_clone_actions(admin_browser):
    job = JobFactory(status=JobStatus.SENT)

    def act(action):
        return admin_browser.post(
            CHANGELIST, {"action": action, "_selected_action": [job.pk]}, follow=True
        ).content.decode()

    assert "Paused 1 job(s)." in act("pause_jobs")
    assert "Resumed 1 job(s)." in act("resume_jobs")
    assert "has no failed or timed-out deliveries" in act("retry_jobs")
    assert "Cloned 1 job(s)." in act("clone_jobs")
    assert Job.objects.filter(cloned_from=job).count() == 1
    events = sorted(AuditLog.objects.values_list("event_type", flat=True))
    assert events == ["job.cloned", "job.paused", "job.resumed"]


def test_a_job_not_yet_started_shows_its_pre_flight_numbers(admin_browser):
    from devices_app.tests.factories import DeviceFactory

    job = JobFactory()
    DeviceFactory.create_batch(2, site=job.site, status="online")
    DeviceFactory(site=job.site, status="offline")

    page = admin_browser.get(change_url(job)).content.decode()
    assert "3 devices match (2 online now, 0 with unfinished work) at 1 site(s)" in page


# --- The guided new-job form -------------------------------------------------------------------


@pytest.fixture
def manager_browser(client):
    """A store manager (not an admin) of `their_site`, logged in to the console."""
    site = SiteFactory(site_id="site-mgr")
    user = UserFactory(is_staff=True)
    grant_perms(user, "jobs_app.view_job", "jobs_app.add_job", "jobs_app.change_job")
    SiteMembershipFactory(user=user, site=site, role=MembershipRole.MANAGER)
    client.force_login(user)
    client.their_site = site
    return client


def test_the_form_asks_for_each_actions_settings_and_hides_raw_json_from_managers(manager_browser):
    page = manager_browser.get(ADD).content.decode()

    assert 'name="p__update_pos_payment_config__gateway_url"' in page
    assert 'name="p__software_update__version"' in page and 'name="p__update_config__settings"' in page
    assert 'class="module aligned hp-payload hp-payload--restart_pos_app"' in page
    assert 'name="device_types"' in page and 'name="firmware_versions"' in page
    assert 'name="payload"' not in page and 'name="segment"' not in page  # admins only
    assert 'name="_preview"' in page and 'name="_save"' not in page  # review first


def test_admins_keep_the_raw_json_under_advanced(admin_browser):
    page = admin_browser.get(ADD).content.decode()
    assert 'name="payload"' in page and 'name="segment"' in page


def test_a_known_action_shows_only_its_settings(admin_browser):
    page = admin_browser.get(ADD, {"action": "software_update"}).content.decode()
    assert 'name="p__software_update__version"' in page
    assert "p__update_pos_payment_config__gateway_url" not in page
    assert '<option value="software_update" selected>' in page


def test_a_manager_creates_a_job_from_fields_and_lands_on_its_page(manager_browser):
    from devices_app.tests.factories import DeviceFactory

    site = manager_browser.their_site
    DeviceFactory.create_batch(2, site=site, device_type="pos_terminal", firmware_version="4.1.7")
    DeviceFactory(site=site, device_type="kiosk")
    data = {
        "site": site.pk,
        "action": "software_update",
        "priority": "normal",
        "p__software_update__version": "4.2.1",
        "p__software_update__checksum": "sha256:" + "b" * 64,
        "p__software_update__reboot": "true",
        "device_types": ["pos_terminal"],
        "firmware_versions": "4.1.7, 4.1.8",
        "batch_size": "",
    }

    review = manager_browser.post(ADD, {**data, "_preview": "Review"})
    assert "<strong>2 devices</strong> at 1 site" in review.text and not Job.objects.exists()

    response = manager_browser.post(ADD, {**data, "_save": "Confirm"})

    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"] == change_url(job)
    assert job.payload == {"version": "4.2.1", "checksum": "sha256:" + "b" * 64, "reboot": True}
    assert job.segment == {"device_type": ["pos_terminal"], "firmware_version": ["4.1.7", "4.1.8"]}
    page = manager_browser.get(response["Location"]).content.decode()
    assert f"Job #{job.pk} (Software update) created: queued." in page


def test_a_bad_setting_is_shown_at_its_field_and_nothing_is_saved(manager_browser):
    data = {
        "site": manager_browser.their_site.pk,
        "action": "update_pos_payment_config",
        "priority": "normal",
        "p__update_pos_payment_config__gateway_url": "payments.example.com",
        "p__update_pos_payment_config__timeout_seconds": "900",
    }
    for button in ("_preview", "_save"):
        response = manager_browser.post(ADD, {**data, button: "x"})
        errors = response.context["adminform"].form.errors
        assert "http:// or https:// URL" in errors["p__update_pos_payment_config__gateway_url"][0]
        assert "p__update_pos_payment_config__timeout_seconds" in errors
    assert not Job.objects.exists()


def test_update_config_settings_are_typed_lines(admin_browser):
    site = SiteFactory()
    admin_browser.post(
        ADD,
        {
            "site": site.pk,
            "action": "update_config",
            "priority": "normal",
            "p__update_config__settings": "receipt_footer = Thank you!\ntax_rate = 0.2\ntips = true",
            "_save": "x",
        },
    )
    assert Job.objects.get().payload == {"receipt_footer": "Thank you!", "tax_rate": 0.2, "tips": True}


def test_the_form_is_prefilled_from_the_query_string(manager_browser):
    from devices_app.tests.factories import DeviceFactory

    site = manager_browser.their_site
    till = DeviceFactory(site=site)
    foreign = DeviceFactory()

    form = manager_browser.get(ADD, {"site": site.pk, "action": "restart_pos_app"}).context["adminform"].form
    assert (form.initial["site"], form.initial["action"]) == (str(site.pk), "restart_pos_app")
    assert form.initial["failure_threshold_percent"] == 20 and form.initial["batch_size"] == 2000

    form = manager_browser.get(ADD, {"device": till.pk}).context["adminform"].form
    assert (form.initial["site"], form.initial["target_devices"]) == (str(site.pk), [str(till.pk)])

    # Another store's device, or garbage, is left out rather than failing.
    form = manager_browser.get(ADD, {"device": foreign.pk, "site": "abc"}).context["adminform"].form
    assert "site" not in form.initial and "target_devices" not in form.initial


# --- The job page ---------------------------------------------------------------------------------


def running_job(admin_user, devices=7, completed=3, failed=1):
    from devices_app.tests.factories import DeviceFactory
    from jobs_app import dispatch, services
    from jobs_app.models import Delivery

    site = SiteFactory(site_id="site-run")
    DeviceFactory.create_batch(devices, site=site)
    job = services.job_create(actor=admin_user, site=site, action="update_config")
    dispatch.dispatch_pass(job.pk)
    deliveries = list(Delivery.objects.filter(job=job).select_related("device").order_by("id"))
    for d in deliveries[:completed]:
        services.delivery_report(device=d.device, delivery_id=d.pk, outcome="completed")
    for d in deliveries[completed : completed + failed]:
        services.delivery_report(device=d.device, delivery_id=d.pk, outcome="failed", error="boom")
    job.refresh_from_db()
    return job


def test_the_job_page_shows_progress_in_words_per_site_and_links(admin_browser, admin_user):
    job = running_job(admin_user)

    page = admin_browser.get(change_url(job)).content.decode()

    assert "3 of 7 devices completed (43 %)" in page
    assert '<span class="hp-badge hp-badge--bad">Failed</span> 1' in page
    site_url = reverse("admin:sites_app_site_change", args=[job.site.pk])
    assert f'<td><a href="{site_url}">site-run' in page  # per-site breakdown, linked
    assert f'<a href="/api/v1/jobs/{job.pk}/deliveries?status=failed">' in page
    assert 'id="hp-job-progress"' in page and 'data-running="1"' in page
    assert " per second" in page or " per minute" in page or " per hour" in page
    assert "–" not in page.split('id="hp-job-progress"')[1].split("</fieldset>")[0]


def test_the_progress_block_refreshes_from_a_small_json_endpoint(admin_browser, admin_user, client):
    job = running_job(admin_user)
    url = reverse("admin:jobs_app_job_progress", args=[job.pk])

    data = admin_browser.get(url).json()

    assert data["running"] is True and data["status"] == job.status
    assert "3 of 7 devices completed (43 %)" in data["html"]
    # Scoped like the page: a manager of another store gets nothing.
    other = UserFactory(is_staff=True)
    grant_perms(other, "jobs_app.view_job")
    SiteMembershipFactory(user=other, site=SiteFactory(), role=MembershipRole.MANAGER)
    client.force_login(other)
    assert client.get(url).status_code == 404


def test_job_page_queries_are_bounded(admin_browser, admin_user, django_assert_max_num_queries):
    job = running_job(admin_user, devices=30, completed=10, failed=5)
    with django_assert_max_num_queries(40):
        assert admin_browser.get(change_url(job)).status_code == 200
    with django_assert_max_num_queries(12):
        assert admin_browser.get(reverse("admin:jobs_app_job_progress", args=[job.pk])).status_code == 200


@pytest.mark.parametrize(
    ("verb", "status", "after", "event", "message"),
    [
        (
            "pause",
            JobStatus.SENT,
            JobStatus.PAUSED,
            "job.paused",
            "Paused job #{} (Update POS payment configuration).",
        ),
        ("resume", JobStatus.PAUSED, JobStatus.QUEUED, "job.resumed", "Resumed job #{}"),
        ("cancel", JobStatus.QUEUED, JobStatus.CANCELLED, "job.cancelled", "Cancelled job #{}"),
    ],
)
def test_controls_ask_for_confirmation_then_call_the_service(
    admin_browser, verb, status, after, event, message
):
    job = JobFactory(status=status)
    url = reverse("admin:jobs_app_job_control", args=[job.pk, verb])

    assert f'href="{url}"' in admin_browser.get(change_url(job)).content.decode()
    confirm = admin_browser.get(url)
    assert confirm.status_code == 200 and "Yes, " in confirm.content.decode()
    job.refresh_from_db()
    assert job.status == status  # a GET changes nothing

    response = admin_browser.post(url, {"reason": "lunch rush"}, follow=True)

    job.refresh_from_db()
    assert job.status == after
    assert message.format(job.pk) in response.content.decode()
    assert list(AuditLog.objects.values_list("event_type", flat=True)) == [event]


def test_retry_and_clone_controls(admin_browser, admin_user):
    job = running_job(admin_user, devices=3, completed=2, failed=1)
    page = admin_browser.get(change_url(job)).content.decode()
    retry = reverse("admin:jobs_app_job_control", args=[job.pk, "retry"])
    clone = reverse("admin:jobs_app_job_control", args=[job.pk, "clone"])
    assert f'href="{retry}"' in page and f'href="{clone}"' in page
    assert reverse("admin:jobs_app_job_control", args=[job.pk, "resume"]) not in page  # not paused

    assert "Retried 1 device(s) of job #" in admin_browser.post(retry, follow=True).content.decode()
    response = admin_browser.post(clone)
    copy = Job.objects.get(cloned_from=job)
    assert response["Location"] == change_url(copy)


def test_a_viewer_gets_no_controls_and_is_refused(client):
    job = JobFactory(status=JobStatus.SENT)
    viewer = UserFactory(is_staff=True)
    grant_perms(viewer, "jobs_app.view_job")
    SiteMembershipFactory(user=viewer, site=job.site, role=MembershipRole.VIEWER)
    client.force_login(viewer)

    assert "hp-control" not in client.get(change_url(job)).content.decode()
    assert client.post(reverse("admin:jobs_app_job_control", args=[job.pk, "cancel"])).status_code == 403
    job.refresh_from_db()
    assert job.status == JobStatus.SENT


def test_a_finished_job_without_deliveries_says_so_instead_of_starting(admin_browser):
    page = admin_browser.get(change_url(JobFactory(status=JobStatus.COMPLETED))).content.decode()
    assert "No per-device record: this job has no deliveries." in page
    assert "Starting" not in page and "pre-flight" not in page.lower()
