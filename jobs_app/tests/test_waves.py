"""Rolling out in waves: materialised set-based, dispatched wave by wave behind the gate,
approved by a person, capped job-wide; through the services, the dispatcher and the API."""

import datetime

import pytest
from django.db.models import Count
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from homepot.tests.test_metrics import delta, scrape, token  # noqa: F401 - token is a fixture
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

SENT, PENDING = DeliveryStatus.SENT, DeliveryStatus.PENDING


def chain(sites=5, per_site=20):
    """`sites` stores of `per_site` devices each; the first store is returned."""
    stores = SiteFactory.create_batch(sites)
    for store in stores:
        DeviceFactory.create_batch(per_site, site=store)
    return stores


def waved_job(actor, stores, **policy):
    return services.job_create(
        actor=actor, site=stores[0], extra_sites=stores[1:], action="update_config", **policy
    )


def answer(job, wave, *, failing=0):
    """The devices of `wave` report: the first `failing` failed, the rest completed."""
    for index, delivery in enumerate(Delivery.objects.filter(job=job, wave=wave).select_related("device")):
        outcome = DeliveryStatus.FAILED if index < failing else DeliveryStatus.COMPLETED
        services.delivery_report(device=delivery.device, delivery_id=delivery.pk, outcome=outcome)


def sent_by_wave(job):
    sent = Delivery.objects.filter(job=job).exclude(status=PENDING).order_by()
    return dict(sent.values_list("wave").annotate(n=Count("id")).values_list("wave", "n"))


def test_the_canary_is_spread_over_distinct_sites_and_the_waves_reach_their_shares(admin_user):
    stores = chain(sites=5, per_site=20)
    job = waved_job(admin_user, stores, rollout_canary=5, rollout_waves=[10, 50])

    assert services.deliveries_materialise(job.pk) == 100
    job.refresh_from_db()
    assert job.rollout_waves == [10, 50, 100]  # the last 100 is added
    assert job.wave_count == 4
    sizes = [Delivery.objects.filter(job=job, wave=w).count() for w in range(4)]
    assert sizes == [5, 5, 40, 50]  # canary, then up to 10 %, 50 %, 100 % of 100
    canary_sites = set(Delivery.objects.filter(job=job, wave=0).values_list("site_id", flat=True))
    assert canary_sites == {s.pk for s in stores}
    # Later waves are spread too: 10 % of the chain touches every store, not one store first.
    assert Delivery.objects.filter(job=job, wave=2).values("site_id").distinct().count() == 5
    # Ids run in wave order (the dispatcher's keyset walks a wave in id order).
    last_canary = Delivery.objects.filter(job=job, wave=0).order_by("-id").first().pk
    assert not Delivery.objects.filter(job=job, wave__gt=0, id__lt=last_canary).exists()


def test_a_good_change_opens_wave_after_wave_until_every_device_has_it(admin_user):
    stores = chain(sites=4, per_site=5)
    job = waved_job(admin_user, stores, rollout_canary=4, rollout_waves=[50], wave_gate_percent=90)

    dispatch.dispatch_pass(job.pk)
    assert sent_by_wave(job) == {0: 4}  # the canary only

    answer(job, 0)
    result = dispatch.dispatch_pass(job.pk)
    assert result.wave_opened
    assert sent_by_wave(job) == {0: 4, 1: 6}

    answer(job, 1)
    dispatch.dispatch_pass(job.pk)
    answer(job, 2)
    dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    opened = AuditLog.objects.filter(job_id=job.pk, event_type="job.wave_opened")
    assert [row.new_values["wave_open"] for row in opened.order_by("id")] == [1, 2]
    assert opened.order_by("id").first().new_values["previous_wave"]["completed"] == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("token")
def test_opened_and_stopped_waves_are_counted_on_the_metrics_page(admin_user):
    stores = chain(sites=2, per_site=2)
    good = waved_job(admin_user, stores, rollout_canary=2)
    bad = waved_job(admin_user, stores, rollout_canary=2)
    for job in (good, bad):
        dispatch.dispatch_pass(job.pk)
    before = scrape()

    answer(good, 0)
    answer(bad, 0, failing=1)
    for job in (good, bad):
        dispatch.dispatch_pass(job.pk)

    after = scrape()
    assert delta(before, after, "homepot_job_waves_total", outcome="opened") == 1
    assert delta(before, after, "homepot_job_waves_total", outcome="stopped") == 1


def test_a_bad_change_stops_after_the_canary(admin_user):
    stores = chain(sites=5, per_site=10)
    job = waved_job(admin_user, stores, rollout_canary=5, rollout_waves=[20], wave_gate_percent=80)
    dispatch.dispatch_pass(job.pk)

    answer(job, 0, failing=2)  # 60 % success, under the 80 % gate
    result = dispatch.dispatch_pass(job.pk)

    job.refresh_from_db()
    assert result.wave_stopped and result.sent == 0
    assert job.status == JobStatus.PAUSED
    assert "Canary below its gate: 3 of 5 answers succeeded (60.0%, the gate is 80%)" in job.status_reason
    assert Delivery.objects.filter(job=job, wave__gt=0).exclude(status=PENDING).count() == 0
    paused = AuditLog.objects.get(job_id=job.pk, event_type="job.paused")
    assert paused.new_values["wave_numbers"]["failed"] == 2
    # Resuming checks the gate again: still below it, the job pauses again without sending.
    services.job_resume(actor=admin_user, job=job)
    dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED
    assert Delivery.objects.filter(job=job, wave__gt=0).exclude(status=PENDING).count() == 0


def test_without_waves_every_batch_goes_in_one_pass(admin_user):
    stores = chain(sites=3, per_site=4)
    job = waved_job(admin_user, stores)
    dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert job.wave_count == 1 and job.rollout_waves == []
    assert Delivery.objects.filter(job=job, status=SENT).count() == 12


def test_the_soak_time_holds_the_next_wave_until_it_is_over(admin_user):
    stores = chain(sites=2, per_site=3)
    job = waved_job(admin_user, stores, rollout_canary=2, wave_soak=datetime.timedelta(hours=1))
    dispatch.dispatch_pass(job.pk)
    answer(job, 0)

    result = dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert not result.wave_opened and result.sent == 0
    assert datetime.datetime.fromisoformat(result.soak_until) == job.wave_passed_at + datetime.timedelta(
        hours=1
    )
    assert services.job_waves(job)[0]["state"] == "soaking (60 min left)"

    Job.objects.filter(pk=job.pk).update(wave_passed_at=job.wave_passed_at - datetime.timedelta(hours=1))
    result = dispatch.dispatch_pass(job.pk)
    assert result.wave_opened and result.sent == 4


def test_the_job_wide_cap_holds_devices_across_all_sites(admin_user):
    stores = chain(sites=3, per_site=4)
    job = waved_job(admin_user, stores, max_in_flight=5)

    result = dispatch.dispatch_pass(job.pk)

    assert result.sent == 5 and result.held == 7
    answer_one = Delivery.objects.filter(job=job, status=SENT).select_related("device").first()
    services.delivery_report(device=answer_one.device, delivery_id=answer_one.pk, outcome="completed")
    assert dispatch.dispatch_pass(job.pk).sent == 1


# --- API ------------------------------------------------------------------------------------------


@pytest.fixture
def stores():
    return chain(sites=3, per_site=4)


def create(client, stores, **body):
    return client.post(
        "/jobs",
        {
            "site_id": stores[0].site_id,
            "extra_sites": [s.site_id for s in stores[1:]],
            "action": "update_config",
            **body,
        },
        format="json",
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"rollout_waves": [50, 10]}, "rollout_waves"),
        ({"rollout_waves": [0, 100]}, "rollout_waves.0"),
        ({"rollout_waves": "half"}, "rollout_waves"),
        ({"rollout_canary": 0}, "rollout_canary"),
        ({"wave_gate_percent": 90}, "wave_gate_percent"),  # no waves to gate
        ({"rollout_canary": 2, "wave_gate_percent": 101}, "wave_gate_percent"),
        ({"wave_approval": True}, "wave_approval"),
        ({"rollout_canary": 2, "wave_soak_seconds": -1}, "wave_soak_seconds"),
        ({"max_in_flight": 0}, "max_in_flight"),
    ],
)
def test_a_bad_rollout_policy_is_a_400_naming_the_field(admin_api, stores, body, field):
    assert_error(create(admin_api, stores, **body), 400, field=field)
    assert not Job.objects.exists()


def test_approve_wave_opens_the_next_wave_once_and_is_audited(admin_api, admin_user, stores):
    response = create(
        admin_api, stores, rollout_canary=3, rollout_waves=[50], wave_gate_percent=100, wave_approval=True
    )
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert response.json()["wave_approval"] is True
    assert_error(admin_api.post(f"/jobs/{job.pk}/approve-wave"), 409, code="no_wave_awaiting_approval")

    dispatch.dispatch_pass(job.pk)
    answer(job, 0)
    dispatch.dispatch_pass(job.pk)
    assert sent_by_wave(job) == {0: 3}  # passed, but waits for a person
    waves = admin_api.get(f"/jobs/{job.pk}").json()["waves"]
    assert [w["state"] for w in waves] == ["awaiting approval", "waiting", "waiting"]
    assert waves[0] | {"state": None} == {
        "wave": 0,
        "label": "canary",
        "devices_reached": 3,
        "gate_percent": 100,
        "total": 3,
        "unfinished": 0,
        "completed": 3,
        "failed": 0,
        "success_percent": 100.0,
        "state": None,
    }

    response = admin_api.post(f"/jobs/{job.pk}/approve-wave")
    assert response.status_code == 200, response.content
    assert response.json()["wave_open"] == 1
    dispatch.dispatch_pass(job.pk)
    assert sent_by_wave(job) == {0: 3, 1: 3}
    assert_error(admin_api.post(f"/jobs/{job.pk}/approve-wave"), 409, code="no_wave_awaiting_approval")
    approved = AuditLog.objects.get(job_id=job.pk, event_type="job.wave_approved")
    assert approved.actor_id == admin_user.pk
    assert approved.new_values["wave_open"] == 1


def test_approving_a_wave_stopped_by_its_gate_overrides_it_and_runs_the_job_again(admin_api, stores):
    job = Job.objects.get(pk=create(admin_api, stores, rollout_canary=3, wave_gate_percent=100).json()["id"])
    dispatch.dispatch_pass(job.pk)
    answer(job, 0, failing=1)
    dispatch.dispatch_pass(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.PAUSED

    response = admin_api.post(f"/jobs/{job.pk}/approve-wave")

    assert response.status_code == 200, response.content
    assert response.json()["status"] == JobStatus.QUEUED
    assert AuditLog.objects.get(job_id=job.pk, event_type="job.wave_approved").new_values["gate_overridden"]
    assert dispatch.dispatch_pass(job.pk).sent == 9


def test_approve_wave_is_scoped(stores, admin_user):
    job = waved_job(admin_user, stores, rollout_canary=3, wave_approval=True)
    dispatch.dispatch_pass(job.pk)
    answer(job, 0)
    dispatch.dispatch_pass(job.pk)
    viewer = token_client(SiteMembershipFactory(site=stores[0], role=MembershipRole.VIEWER).user)
    stranger = token_client(SiteMembershipFactory(role=MembershipRole.MANAGER).user)

    assert viewer.post(f"/jobs/{job.pk}/approve-wave").status_code == 403
    assert stranger.post(f"/jobs/{job.pk}/approve-wave").status_code == 404
    job.refresh_from_db()
    assert job.wave_open == 0
    manager = token_client(SiteMembershipFactory(site=stores[0], role=MembershipRole.MANAGER).user)
    assert manager.post(f"/jobs/{job.pk}/approve-wave").status_code == 200


# --- Admin ----------------------------------------------------------------------------------------

ADD = reverse("admin:jobs_app_job_add")


def admin_form(stores, **overrides):
    return {
        "site": stores[0].pk,
        "extra_sites": [s.pk for s in stores[1:]],
        "action": "update_pos_payment_config",
        "priority": "normal",
        "description": "Switch payment gateway",
        "p__update_pos_payment_config__gateway_url": "https://payments-v2.example.com",
        "batch_size": "2000",
        "_save": "Save",
        **overrides,
    }


def test_the_admin_form_sets_waves_and_gate_under_advanced(admin_browser, stores):
    response = admin_browser.post(
        ADD,
        admin_form(
            stores,
            rollout_canary="3",
            rollout_waves="25, 50",
            wave_gate_percent="95",
            wave_soak="00:30:00",
            wave_approval="on",
            max_in_flight="100",
        ),
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    job = Job.objects.get()
    assert (job.rollout_canary, job.rollout_waves, job.wave_gate_percent) == (3, [25, 50, 100], 95)
    assert (job.wave_soak, job.wave_approval, job.max_in_flight) == (
        datetime.timedelta(minutes=30),
        True,
        100,
    )
    created = AuditLog.objects.get(job_id=job.pk, event_type="job.created")
    assert created.new_values["rollout_waves"] == [25, 50, 100]
    assert created.new_values["wave_soak_seconds"] == 1800


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rollout_waves": "50, 10"}, "rollout_waves"),
        ({"rollout_waves": "half"}, "rollout_waves"),
        ({"wave_gate_percent": "90"}, "wave_gate_percent"),
    ],
)
def test_a_bad_wave_setting_is_shown_at_its_field(admin_browser, stores, fields, field):
    response = admin_browser.post(ADD, admin_form(stores, **fields))

    assert response.status_code == 200
    assert field in response.context["adminform"].form.errors
    assert not Job.objects.exists()


def test_the_job_page_shows_each_wave_and_an_approve_button_that_asks_first(
    admin_browser, admin_user, stores
):
    job = waved_job(admin_user, stores, rollout_canary=3, wave_approval=True)
    dispatch.dispatch_pass(job.pk)
    page = reverse("admin:jobs_app_job_change", args=[job.pk])
    approve = reverse("admin:jobs_app_job_control", args=[job.pk, "approve_wave"])
    assert f'href="{approve}"' not in admin_browser.get(page).content.decode()  # canary still out

    answer(job, 0)
    dispatch.dispatch_pass(job.pk)
    html = admin_browser.get(page).content.decode()
    assert "<td>canary</td><td>3 (3)</td><td>100 %</td><td>3</td><td>0</td><td>0</td><td>100.0 %</td>" in html
    assert "<td>awaiting approval</td>" in html
    assert f'href="{approve}"' in html
    assert "Yes, approve the next wave" in admin_browser.get(approve).content.decode()
    job.refresh_from_db()
    assert job.wave_open == 0  # the confirmation page changes nothing

    response = admin_browser.post(approve, follow=True)

    assert "Opened the next wave of job #" in response.content.decode()
    job.refresh_from_db()
    assert job.wave_open == 1
    assert AuditLog.objects.filter(job_id=job.pk, event_type="job.wave_approved").count() == 1


def test_a_clone_keeps_the_rollout_policy(admin_api, stores):
    body = {
        "rollout_canary": 2,
        "rollout_waves": [10, 100],
        "wave_gate_percent": 95,
        "wave_soak_seconds": 600,
        "wave_approval": True,
        "max_in_flight": 50,
    }
    job = create(admin_api, stores, **body).json()

    clone = admin_api.post(f"/jobs/{job['id']}/clone").json()

    assert {name: clone[name] for name in body} == body
    assert clone["cloned_from"] == job["id"]
