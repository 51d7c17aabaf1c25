"""The jobs API (operator) and the agent API (devices), through HTTP clients."""

import pytest
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from jobs_app import dispatch, services
from jobs_app.choices import DeliveryStatus, JobStatus
from jobs_app.models import Delivery, Job
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def site(db):
    site = SiteFactory(site_id="site-123")
    DeviceFactory.create_batch(3, site=site)
    return site


@pytest.fixture
def manager(site):
    return token_client(SiteMembershipFactory(site=site, role=MembershipRole.MANAGER).user)


@pytest.fixture
def viewer(site):
    return token_client(SiteMembershipFactory(site=site, role=MembershipRole.VIEWER).user)


def create(client, **body):
    return client.post("/jobs", {"site_id": "site-123", "action": "update_config", **body}, format="json")


# --- Operator API ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api/v1"])
def test_create_with_targets_and_policy_then_read_progress(admin_api, site, prefix):
    response = admin_api.post(
        f"{prefix}/jobs",
        {
            "site_id": "site-123",
            "action": "update_pos_payment_config",
            "payload": {"gateway_url": "https://v2"},
            "segment": {"device_type": ["pos_terminal"]},
            "batch_size": 2,
            "max_in_flight_per_site": 2,
            "failure_threshold_percent": 20,
            "ttl_seconds": 600,
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["status"], body["batch_size"], body["ttl_seconds"], body["site"]) == (
        "queued",
        2,
        600,
        "site-123",
    )
    assert AuditLog.objects.filter(event_type="job.created", job_id=body["id"]).count() == 1
    dispatch.dispatch_pass(body["id"])
    detail = admin_api.get(f"{prefix}/jobs/{body['id']}").json()
    assert detail["progress"]["total"] == 3
    assert detail["progress"]["counts"]["sent"] == 2  # two in flight at the site, one held


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"action": "format_disk"}, "action"),
        ({"site_id": "site-999"}, "site_id"),
        ({"segment": {"colour": ["red"]}}, "segment"),
        ({"batch_size": 0}, "batch_size"),
        ({"failure_threshold_percent": 101}, "failure_threshold_percent"),
        ({"payload": ["not", "an", "object"]}, "payload"),
        ({"target_devices": ["no-such-device"]}, "target_devices"),
        ({"ttl_seconds": "soon"}, "ttl_seconds"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(admin_api, site, body, field):
    assert_error(create(admin_api, **body), 400, field=field)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("action", "payload", "field"),
    [
        ("update_pos_payment_config", {}, "payload.gateway_url"),
        ("update_pos_payment_config", {"gateway_url": "ftp://x"}, "payload.gateway_url"),
        (
            "update_pos_payment_config",
            {"gateway_url": "https://v2", "timeout_seconds": 0},
            "payload.timeout_seconds",
        ),
        (
            "update_pos_payment_config",
            {"gateway_url": "https://v2", "gateway_ulr": "x"},
            "payload.gateway_ulr",
        ),
        ("software_update", {"version": "4.2"}, "payload.version"),
        ("software_update", {"version": "4.2.1", "checksum": "md5:abc"}, "payload.checksum"),
        ("restart_pos_app", {"grace_period_s": "soon"}, "payload.grace_period_s"),
        ("update_config", {"receipt": {"nested": 1}}, "payload.receipt"),
        ("health_check", {"checks": ["teleport"]}, "payload.checks"),
    ],
)
def test_a_bad_payload_is_a_400_naming_the_key(admin_api, site, action, payload, field):
    error = assert_error(create(admin_api, action=action, payload=payload), 400, field=field)
    assert list(error["fields"]) == [field]
    assert not Job.objects.exists()


def test_each_action_accepts_its_documented_payload(admin_api, site):
    good = {
        "update_pos_payment_config": {
            "gateway_url": "https://pay.example.com/v2",
            "merchant_id": "M-1",
            "timeout_seconds": 30,
            "accepted_networks": ["visa"],
        },
        "update_config": {"receipt_footer": "Thanks!", "tax_rate": 0.2, "tips": True},
        "restart_pos_app": {"grace_period_s": 30, "reason": "stuck"},
        "software_update": {
            "version": "4.2.1-rc.1",
            "package_url": "https://cdn.example.com/pos.pkg",
            "checksum": "sha256:" + "a" * 64,
            "reboot": True,
        },
        "health_check": {},
    }
    for action, payload in good.items():
        response = create(admin_api, action=action, payload=payload)
        assert response.status_code == 201, response.content
        assert response.json()["payload"] == payload


def test_patch_checks_the_payload_against_the_action(admin_api, site):
    job_id = create(admin_api, action="software_update", payload={"version": "1.0.0"}).json()["id"]
    assert_error(
        admin_api.patch(f"/jobs/{job_id}", {"payload": {"version": "one"}}, format="json"),
        400,
        field="payload.version",
    )
    assert Job.objects.get().payload == {"version": "1.0.0"}


def test_the_payload_schemas_are_in_the_openapi_document(admin_api):
    schema = admin_api.get("/api/schema/", HTTP_ACCEPT="application/json")
    if schema.status_code == 404:
        pytest.skip("schema served elsewhere")
    assert "payload.<key>" in schema.content.decode() and "semver" in schema.content.decode()


def test_a_manager_cannot_target_another_sites_devices(manager, site):
    other = SiteFactory(site_id="site-777")
    foreign = DeviceFactory(site=other)

    assert_error(create(manager, extra_sites=["site-777"]), 400, field="extra_sites.0")
    assert_error(create(manager, target_devices=[foreign.device_id]), 400, field="target_devices")
    assert_error(create(manager, site_id="site-777"), 400, field="site_id")
    assert create(manager).status_code == 201
    assert Job.objects.count() == 1


def test_a_viewer_sees_jobs_but_cannot_act(viewer, site):
    job = JobFactory(site=site)
    assert viewer.get(f"/jobs/{job.pk}").status_code == 200
    assert_error(create(viewer), 403)  # viewers have no add_job permission
    assert_error(viewer.post(f"/jobs/{job.pk}/pause"), 403)


def test_another_sites_job_is_a_404_for_every_door(manager):
    foreign = JobFactory(site=SiteFactory())
    for method, path in [
        ("get", f"/jobs/{foreign.pk}"),
        ("get", f"/jobs/{foreign.pk}/deliveries"),
        ("post", f"/jobs/{foreign.pk}/pause"),
        ("post", f"/jobs/{foreign.pk}/cancel"),
        ("post", f"/jobs/{foreign.pk}/clone"),
        ("patch", f"/jobs/{foreign.pk}"),
    ]:
        assert_error(getattr(manager, method)(path, {}, format="json"), 404)
    assert manager.get("/jobs").json()["results"] == []


def test_list_filters_and_cursor_pages(admin_api, site):
    other = SiteFactory(site_id="site-456")
    done = JobFactory(site=site, status=JobStatus.COMPLETED)
    queued = JobFactory(site=other, status=JobStatus.QUEUED, action="restart_pos_app")

    def ids(**params):
        return [job["id"] for job in admin_api.get("/jobs", params).json()["results"]]

    assert ids() == [queued.pk, done.pk]
    assert ids(status="completed") == [done.pk]
    assert ids(site="site-456") == [queued.pk]
    assert ids(action="restart_pos_app") == [queued.pk]
    assert ids(creator=done.created_by.username) == [done.pk]
    first = admin_api.get("/jobs", {"page_size": 1}).json()
    assert [j["id"] for j in first["results"]] == [queued.pk]
    assert [j["id"] for j in admin_api.get(first["next"]).json()["results"]] == [done.pk]
    assert_error(admin_api.get("/jobs", {"status": "lost"}), 400, field="status")
    assert_error(admin_api.get("/jobs", {"created_after": "yesterday"}), 400, field="created_after")


def test_jobs_of_a_device(admin_api, site):
    job = services.job_create(actor=admin_api.user, site=site, action="update_config")
    services.deliveries_materialise(job.pk)
    JobFactory(site=site)  # never materialised: no delivery to the device
    device = site.devices.first()
    assert [j["id"] for j in admin_api.get("/jobs", {"device": device.device_id}).json()["results"]] == [
        job.pk
    ]


def test_controls_answer_409_on_illegal_transitions_and_audit_once(admin_api, site):
    job_id = create(admin_api).json()["id"]

    assert (
        admin_api.post(f"/jobs/{job_id}/pause", {"reason": "lunch rush"}, format="json").json()[
            "status_reason"
        ]
        == "lunch rush"
    )
    assert admin_api.post(f"/jobs/{job_id}/resume").json()["status"] == "queued"
    assert admin_api.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    assert admin_api.post(f"/jobs/{job_id}/cancel").status_code == 200  # a repeat is a no-op
    assert_error(admin_api.post(f"/jobs/{job_id}/pause"), 409, code="job_not_active")
    assert_error(admin_api.post(f"/jobs/{job_id}/resume"), 409, code="job_not_active")
    assert_error(admin_api.post(f"/jobs/{job_id}/retry"), 409, code="job_not_active")
    events = list(AuditLog.objects.filter(job_id=job_id).values_list("event_type", flat=True))
    assert sorted(events) == ["job.cancelled", "job.created", "job.paused", "job.resumed"]


def test_retry_and_clone(admin_api, site):
    job_id = create(admin_api).json()["id"]
    dispatch.dispatch_pass(job_id)
    Delivery.objects.filter(job_id=job_id).update(status=DeliveryStatus.FAILED)
    services.job_rollup(job_id)

    retried = admin_api.post(f"/jobs/{job_id}/retry")
    assert (retried.status_code, retried.json()["retried"], retried.json()["status"]) == (200, 3, "queued")
    assert_error(admin_api.post(f"/jobs/{job_id}/retry"), 409, code="nothing_to_retry")
    clone = admin_api.post(f"/jobs/{job_id}/clone")
    assert clone.status_code == 201 and clone.json()["cloned_from"] == job_id


def test_deliveries_are_cursor_paginated_and_filtered(admin_api, site):
    job_id = create(admin_api).json()["id"]
    dispatch.dispatch_pass(job_id)
    first = Delivery.objects.filter(job_id=job_id).first()
    Delivery.objects.filter(pk=first.pk).update(status=DeliveryStatus.FAILED, last_error="disk full")

    page = admin_api.get(f"/jobs/{job_id}/deliveries", {"page_size": 2}).json()
    assert len(page["results"]) == 2 and page["next"]
    rest = admin_api.get(page["next"]).json()
    assert len(rest["results"]) == 1 and rest["next"] is None
    failed = admin_api.get(f"/jobs/{job_id}/deliveries", {"status": "failed"}).json()["results"]
    assert [(d["id"], d["last_error"], d["site"]) for d in failed] == [(first.pk, "disk full", "site-123")]
    assert_error(admin_api.get(f"/jobs/{job_id}/deliveries", {"status": "lost"}), 400, field="status")


def test_preview_gives_pre_flight_numbers_and_creates_nothing(admin_api, site):
    response = admin_api.post(
        "/jobs/preview", {"site_id": "site-123", "max_in_flight_per_site": 1}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["matching"] == 3
    assert response.json()["expected_duration_seconds"] == 3 * 30
    assert not Job.objects.exists()
    assert_error(admin_api.post("/jobs/preview", {"site_id": "nope"}, format="json"), 400, field="site_id")


def test_patch_edits_description_and_refuses_payload_after_sending(admin_api, site):
    job_id = create(admin_api).json()["id"]
    assert (
        admin_api.patch(f"/jobs/{job_id}", {"description": "new"}, format="json").json()["description"]
        == "new"
    )
    dispatch.dispatch_pass(job_id)
    assert_error(
        admin_api.patch(f"/jobs/{job_id}", {"payload": {"a": 1}}, format="json"), 409, field="payload"
    )
    assert admin_api.put(f"/jobs/{job_id}", {}, format="json").status_code == 405


# --- Agent API ---------------------------------------------------------------------------------


def device_client(device):
    _, secret = device_credential_issue(actor=None, device=device)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Device {secret}")
    client.secret = secret
    return client


@pytest.fixture
def sent_job(admin_user, site):
    job = services.job_create(actor=admin_user, site=site, action="update_config", payload={"k": "v"})
    dispatch.dispatch_pass(job.pk)
    return job


def test_a_device_polls_acks_and_reports_its_work(sent_job):
    device = sent_job.deliveries.first().device
    client = device_client(device)

    commands = client.get("/api/v1/agent/commands").json()["commands"]
    assert [(c["job_id"], c["action"], c["payload"], c["status"]) for c in commands] == [
        (sent_job.pk, "update_config", {"k": "v"}, "sent")
    ]
    delivery_id = commands[0]["delivery_id"]
    assert client.post(f"/api/v1/agent/deliveries/{delivery_id}/ack").json() == {
        "delivery_id": delivery_id,
        "status": "acknowledged",
    }
    assert client.post(f"/api/v1/agent/deliveries/{delivery_id}/ack").json()["status"] == "acknowledged"
    done = client.post(
        f"/api/v1/agent/deliveries/{delivery_id}/result",
        {"status": "completed", "details": {"applied": True}},
        format="json",
    )
    assert done.json()["status"] == "completed"
    # Out of order: an ack after the result changes nothing; the mailbox is empty.
    assert client.post(f"/api/v1/agent/deliveries/{delivery_id}/ack").json()["status"] == "completed"
    assert client.get("/api/v1/agent/commands").json()["commands"] == []
    assert Delivery.objects.get(pk=delivery_id).result == {"applied": True}
    assert not AuditLog.objects.filter(event_type__startswith="delivery").exists()


def test_a_failure_report_carries_its_error(sent_job):
    delivery = sent_job.deliveries.first()
    client = device_client(delivery.device)
    response = client.post(
        f"/api/v1/agent/deliveries/{delivery.pk}/result",
        {"status": "failed", "error": "bad key"},
        format="json",
    )
    assert response.json()["status"] == "failed"
    delivery.refresh_from_db()
    assert delivery.last_error == "bad key"
    assert_error(
        client.post(f"/api/v1/agent/deliveries/{delivery.pk}/result", {"status": "done"}, format="json"),
        400,
        field="status",
    )


def test_another_devices_or_an_unknown_delivery_is_a_404(sent_job):
    mine, theirs = sent_job.deliveries.all()[:2]
    client = device_client(mine.device)
    for path in (f"deliveries/{theirs.pk}/ack", f"deliveries/{theirs.pk}/result", "deliveries/999999999/ack"):
        assert_error(client.post(f"/api/v1/agent/{path}", {"status": "completed"}, format="json"), 404)
    theirs.refresh_from_db()
    assert theirs.status == DeliveryStatus.SENT
    assert [c["delivery_id"] for c in client.get("/api/v1/agent/commands").json()["commands"]] == [mine.pk]


def test_wrong_or_revoked_credentials_and_operator_tokens_are_refused(sent_job, admin_api):
    delivery = sent_job.deliveries.first()
    client = device_client(delivery.device)
    wrong = APIClient()
    wrong.credentials(HTTP_AUTHORIZATION="Device hpd_not-a-real-secret")
    assert_error(wrong.get("/api/v1/agent/commands"), 401)
    assert_error(admin_api.post(f"/api/v1/agent/deliveries/{delivery.pk}/ack"), 401)
    device_credential_revoke(actor=None, device=delivery.device)
    assert_error(client.post(f"/api/v1/agent/deliveries/{delivery.pk}/ack"), 401)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT


def test_devices_cannot_reach_the_operator_api(sent_job):
    client = device_client(sent_job.deliveries.first().device)
    assert client.get("/jobs").status_code in (401, 403)
    assert client.post(f"/jobs/{sent_job.pk}/cancel").status_code in (401, 403, 404)


def test_a_member_sees_only_their_own_stores_side_of_a_job_spread_wider(admin_api, manager, site):
    other = SiteFactory(site_id="site-777")
    DeviceFactory(site=other, device_id="pos-terminal-777")
    job_id = create(admin_api, extra_sites=["site-777"]).json()["id"]
    dispatch.dispatch_pass(job_id)

    assert admin_api.get(f"/jobs/{job_id}").json()["extra_sites"] == ["site-777"]
    detail = manager.get(f"/jobs/{job_id}").json()
    assert detail["extra_sites"] == [] and detail["progress"]["total"] == 4
    sites = {d["site"] for d in manager.get(f"/jobs/{job_id}/deliveries").json()["results"]}
    assert sites == {"site-123"}


def test_the_jobs_of_a_device_are_an_alias_of_the_device_filter(admin_api, manager, site):
    device = site.devices.order_by("id").first()
    job = JobFactory(site=site)
    Delivery.objects.create(job=job, device=device, site=site)
    JobFactory(site=site)  # not sent to this device
    for prefix in ("", "/api/v1"):
        alias = manager.get(f"{prefix}/devices/{device.device_id}/jobs").json()["results"]
        filtered = manager.get(f"{prefix}/jobs", {"device": device.device_id}).json()["results"]
        assert [row["id"] for row in alias] == [row["id"] for row in filtered] == [job.pk]
    other = DeviceFactory()  # another store's device
    assert_error(manager.get(f"/devices/{other.device_id}/jobs"), 404)
    assert_error(manager.get("/devices/no-such-device/jobs"), 404)
    assert admin_api.get(f"/devices/{other.device_id}/jobs").json()["results"] == []


# --- Creation's answer is built without reading the job back -----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"extra_sites": ["site-777"], "target_devices": ["site-123-dev"], "ttl_seconds": 600},
        {"rollout_waves": [10, 50], "wave_soak_seconds": 60, "rollout_canary": 1, "max_in_flight": 5},
        {"scheduled_at": "2099-01-01T08:30:00+02:00", "priority": "high", "description": "later"},
        {"segment": {"device_type": ["pos_terminal"]}, "failure_threshold_percent": 0, "batch_size": 7},
    ],
)
def test_the_create_answer_is_what_a_get_of_the_new_job_answers(admin_api, site, body):
    SiteFactory(site_id="site-777")
    DeviceFactory(site=site, device_id="site-123-dev")
    created = create(admin_api, **body)
    assert created.status_code == 201, created.content
    assert created.json() == admin_api.get(f"/jobs/{created.json()['id']}").json()


def test_the_create_answer_shows_a_member_only_their_own_sites(manager, site, admin_user):
    # The manager names only their own site; the answer, like a GET, hides nothing of theirs.
    created = create(manager, target_devices=[DeviceFactory(site=site).device_id])
    assert created.status_code == 201, created.content
    assert created.json() == manager.get(f"/jobs/{created.json()['id']}").json()


def test_creating_a_job_costs_a_bounded_number_of_statements(admin_api, site, django_assert_max_num_queries):
    # token, site, scope check, check constraints (in a savepoint), INSERT carrying the
    # dispatch ticket, audit lock + chain head + row: no read-back, no ticket UPDATE.
    create(admin_api)
    with django_assert_max_num_queries(12):
        assert create(admin_api).status_code == 201
