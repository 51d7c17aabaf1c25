"""Jobs that keep to maintenance windows: the dispatcher claims a site's deliveries only while
the site's window is open, comes back when the first closed site opens (not every few
seconds), says which sites wait and when they open, and the action decides the default.

Windows are laid relative to the real clock (the instants PostgreSQL and the dispatcher use):
`window_from(site, start, length)` gives the site a window opening `start` from now in its own
time zone. The DST, midnight and blackout arithmetic is tested in sites_app/tests/test_windows.py."""

import datetime
import zoneinfo

import pytest
from django.db.models import Count
from django.utils import timezone

from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus
from jobs_app.models import Delivery, Job
from sites_app.tests.factories import BlackoutPeriodFactory, MaintenanceWindowFactory, SiteFactory

pytestmark = pytest.mark.django_db

MINUTE = datetime.timedelta(minutes=1)


def window_from(site, start: datetime.timedelta, length=datetime.timedelta(hours=1)) -> datetime.datetime:
    """Give `site` a weekly window opening `start` from now (its local wall clock, whole
    seconds), `length` long; returns the opening instant."""
    opens = (timezone.now() + start).replace(microsecond=0) + datetime.timedelta(seconds=1)
    local = opens.astimezone(zoneinfo.ZoneInfo(site.timezone))
    MaintenanceWindowFactory(
        site=site, weekday=local.isoweekday(), starts=local.time(), ends=(local + length).time()
    )
    return opens


def store(tz, devices=2):
    site = SiteFactory(timezone=tz)
    DeviceFactory.create_batch(devices, site=site)
    return site


def sent_by_site(job):
    return dict(
        Delivery.objects.filter(job=job, status=DeliveryStatus.SENT)
        .values_list("site__site_id")
        .annotate(n=Count("id"))
    )


def run_pass(job):
    """The pass the job's dispatch ticket asks for, as the dispatch_job task runs it."""
    due = Job.objects.get(pk=job.pk).dispatch_due_at
    return dispatch.dispatch_run(job.pk, ticket=due.isoformat() if due else None)


def windowed_job(admin_user, site, *extra, **fields):
    return services.job_create(
        actor=admin_user,
        site=site,
        extra_sites=extra,
        action="update_config",
        within_maintenance_windows=True,
        **fields,
    )


def test_only_sites_inside_their_window_are_sent_to_and_the_next_pass_comes_when_the_next_opens(admin_user):
    tokyo = store("Asia/Tokyo", devices=3)
    window_from(tokyo, -MINUTE)  # opened a minute ago
    new_york = store("America/New_York", devices=2)
    opens = window_from(new_york, 10 * MINUTE)
    job = windowed_job(admin_user, tokyo, new_york)

    result = run_pass(job)

    assert result.sent == 3
    assert sent_by_site(job) == {tokyo.site_id: 3}
    assert Delivery.objects.filter(job=job, site=new_york, status=DeliveryStatus.PENDING).count() == 2
    # Not "again in 5 s": the follow-up pass is due when New York's window opens.
    assert Job.objects.get(pk=job.pk).dispatch_due_at == opens


def test_a_far_opening_is_looked_at_again_after_the_recheck_period(admin_user, settings):
    settings.HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS = 600
    site = store("Europe/London")
    window_from(site, datetime.timedelta(hours=5))
    job = windowed_job(admin_user, site)
    before = timezone.now()

    assert run_pass(job).sent == 0

    due = Job.objects.get(pk=job.pk).dispatch_due_at
    assert before + datetime.timedelta(seconds=600) <= due <= timezone.now() + datetime.timedelta(seconds=600)


def test_when_the_window_opens_the_next_pass_sends(admin_user):
    site = store("Australia/Sydney", devices=4)
    window_from(site, 2 * MINUTE)
    job = windowed_job(admin_user, site)
    assert run_pass(job).sent == 0

    # The window now opened a minute ago, as if the clock had moved on by three minutes
    # (the real worker test in test_worker_windows.py waits for a real opening).
    site.maintenance_windows.all().delete()
    window_from(site, -MINUTE)
    assert run_pass(job).sent == 4


def test_a_blackout_date_holds_every_device_of_the_site(admin_user):
    site = store("Europe/Paris")
    window_from(site, -MINUTE)
    today = timezone.now().astimezone(zoneinfo.ZoneInfo("Europe/Paris")).date()
    BlackoutPeriodFactory(site=site, starts_on=today, ends_on=today)
    job = windowed_job(admin_user, site)

    assert run_pass(job).sent == 0
    assert Job.objects.get(pk=job.pk).dispatch_due_at > timezone.now()


def test_a_job_that_ignores_windows_sends_to_closed_sites_at_once(admin_user):
    site = store("Europe/London", devices=3)
    window_from(site, datetime.timedelta(hours=5))
    job = services.job_create(
        actor=admin_user, site=site, action="update_config", within_maintenance_windows=False
    )

    assert run_pass(job).sent == 3


def test_the_action_decides_the_default_and_the_job_may_override_it(admin_user, settings):
    settings.HOMEPOT_JOBS_WINDOW_ACTIONS = ["software_update"]
    site = store("Europe/London")

    def create(action, **fields):
        payload = {"version": "5.0.0"} if action == "software_update" else {}
        return services.job_create(actor=admin_user, site=site, action=action, payload=payload, **fields)

    assert create("software_update").within_maintenance_windows is True
    assert create("software_update", within_maintenance_windows=False).within_maintenance_windows is False
    assert create("health_check").within_maintenance_windows is False
    assert create("health_check", within_maintenance_windows=True).within_maintenance_windows is True


def test_the_api_takes_the_choice_and_shows_it(admin_api):
    site = store("Europe/London")

    response = admin_api.post(
        "/jobs",
        {"site_id": site.site_id, "action": "restart_pos_app", "within_maintenance_windows": True},
        format="json",
    )

    assert response.status_code == 201, response.content
    assert response.json()["within_maintenance_windows"] is True
    bad = admin_api.post(
        "/jobs",
        {"site_id": site.site_id, "action": "restart_pos_app", "within_maintenance_windows": "yes"},
        format="json",
    )
    assert_error(bad, 400, field="within_maintenance_windows")


def test_the_waiting_sites_are_listed_soonest_first_with_their_opening(admin_user):
    open_now = store("Asia/Tokyo")
    window_from(open_now, -MINUTE)
    later = store("America/New_York")
    later_opens = window_from(later, datetime.timedelta(hours=3))
    sooner = store("Europe/London")
    sooner_opens = window_from(sooner, datetime.timedelta(hours=1))
    job = windowed_job(admin_user, open_now, later, sooner)
    services.deliveries_materialise(job.pk)

    rows = services.sites_waiting(job, limit=10)

    assert [(r["site__site_id"], r["opens_at"], r["pending"]) for r in rows] == [
        (sooner.site_id, sooner_opens, 2),
        (later.site_id, later_opens, 2),
    ]


# --- What operators see: preview, review step and job page ------------------------------------


def test_the_preview_counts_open_sites_and_adds_the_wait_for_the_last_window(admin_api):
    open_now = store("Asia/Tokyo")
    window_from(open_now, -MINUTE)
    later = store("Europe/London")
    opens = window_from(later, datetime.timedelta(hours=3))
    body = {"site_id": open_now.site_id, "extra_sites": [later.site_id]}

    plain = admin_api.post("/jobs/preview", {**body, "action": "update_config"}, format="json").json()
    windowed = admin_api.post(
        "/jobs/preview", {**body, "within_maintenance_windows": True}, format="json"
    ).json()

    assert plain["within_maintenance_windows"] is False and plain["sites_open_now"] is None
    assert windowed["within_maintenance_windows"] is True
    assert windowed["sites_open_now"] == 1
    assert windowed["last_window_opens_at"] == opens.isoformat().replace("+00:00", "Z")
    wait = windowed["expected_duration_seconds"] - plain["expected_duration_seconds"]
    assert 3 * 3600 - 120 <= wait <= 3 * 3600 + 2
    assert f"{later.site_id}: opens" in windowed["expected_duration_basis"]
    assert "Europe/London, in 3 h" in windowed["expected_duration_basis"]


def test_the_action_default_applies_to_the_preview(admin_api, settings):
    settings.HOMEPOT_JOBS_WINDOW_ACTIONS = ["restart_pos_app"]
    site = store("Europe/London")

    body = admin_api.post(
        "/jobs/preview", {"site_id": site.site_id, "action": "restart_pos_app"}, format="json"
    )

    assert body.json()["within_maintenance_windows"] is True
    assert body.json()["sites_open_now"] == 1  # no window at all: any time


def test_the_review_step_says_per_site_when_its_window_opens(admin_browser):
    from jobs_app.tests.test_admin import ADD

    site = store("America/New_York")
    window_from(site, datetime.timedelta(hours=2))
    data = {
        "site": site.pk,
        "action": "restart_pos_app",
        "priority": "normal",
        "within_maintenance_windows": "yes",
        "batch_size": "",
    }

    page = admin_browser.post(ADD, {**data, "_preview": "Review"}).content.decode()

    assert "waiting for window: opens" in page and "America/New_York, in 2 h" in page

    response = admin_browser.post(ADD, {**data, "_save": "Confirm"})
    assert response.status_code == 302, response.content.decode()[-3000:]
    assert Job.objects.get().within_maintenance_windows is True


def test_the_job_page_lists_the_sites_waiting_for_their_window(admin_browser, admin_user):
    from jobs_app.tests.test_admin import change_url

    open_now = store("Asia/Tokyo")
    window_from(open_now, -MINUTE)
    waiting = store("Europe/London", devices=3)
    window_from(waiting, 30 * MINUTE)
    job = windowed_job(admin_user, open_now, waiting)
    run_pass(job)

    page = admin_browser.get(change_url(job)).content.decode()

    assert "these sites wait for their window" in page
    assert (
        waiting.site_id in page and "waiting for window: opens" in page and "Europe/London, in 30 min" in page
    )


def test_waiting_for_a_window_does_not_count_against_the_delivery_deadline(admin_user):
    site = store("Europe/London", devices=2)
    window_from(site, datetime.timedelta(hours=5))
    job = windowed_job(admin_user, site, ttl=datetime.timedelta(minutes=10))
    run_pass(job)

    # Hours later (as the time-out sweep sees it), the deliveries still wait for the window.
    assert services.deliveries_time_out(timezone.now() + datetime.timedelta(hours=4)) == 0
    assert set(Delivery.objects.filter(job=job).values_list("status", flat=True)) == {DeliveryStatus.PENDING}

    site.maintenance_windows.all().delete()
    window_from(site, -MINUTE)
    sent_from = timezone.now()
    run_pass(job)
    deadlines = set(Delivery.objects.filter(job=job).values_list("deadline", flat=True))
    assert len(deadlines) == 1
    assert (
        sent_from + datetime.timedelta(minutes=10)
        <= deadlines.pop()
        <= timezone.now() + datetime.timedelta(minutes=10)
    )


def test_a_pass_reads_the_open_sites_again_after_the_refresh_period(admin_user, settings):
    site = store("Europe/London")
    window_from(site, -MINUTE)
    job = windowed_job(admin_user, site)
    services.deliveries_materialise(job.pk)
    pending = Delivery.objects.filter(job=job)

    settings.HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS = 3600
    gate = services.WindowGate(job)
    assert pending.filter(gate.claim_filter()).count() == 2
    site.maintenance_windows.all().delete()
    window_from(site, datetime.timedelta(hours=2))  # the window is now closed
    assert pending.filter(gate.claim_filter()).count() == 2  # the same pass, within the period

    settings.HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS = 0
    assert pending.filter(gate.claim_filter()).count() == 0
