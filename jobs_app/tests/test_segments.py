"""Saved segments: named device filters to target jobs with (API, admin, job creation)."""

import pytest
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import assert_error, token_client
from jobs_app import dispatch
from jobs_app.models import Delivery, Job, SavedSegment
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

TILLS = {"device_type": ["pos_terminal"], "status": ["online"]}


@pytest.fixture
def store(db):
    return SiteFactory(site_id="site-seg")


@pytest.fixture
def other_store(db):
    return SiteFactory(site_id="site-other")


@pytest.fixture
def manager_user(store):
    return SiteMembershipFactory(site=store, role=MembershipRole.MANAGER).user


@pytest.fixture
def manager(manager_user):
    return token_client(manager_user)


def save(client, **body):
    return client.post("/api/v1/segments", {"name": "Online tills", "segment": TILLS, **body}, format="json")


def test_a_manager_saves_a_segment_for_their_site_and_lists_it(manager, store, manager_user):
    response = save(manager, site_id="site-seg")
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["name"], body["site"], body["site_id"], body["owner"]) == (
        "Online tills",
        "site-seg",
        store.pk,
        manager_user.username,
    )
    assert body["segment"] == {"device_type": ["pos_terminal"], "status": ["online"]}
    listed = manager.get("/segments").json()["results"]
    assert [row["id"] for row in listed] == [body["id"]]
    assert manager.get(f"/segments/{body['id']}").json()["name"] == "Online tills"


def test_a_manager_sees_their_sites_and_site_less_segments_only(manager, store, other_store, admin_user):
    mine = SavedSegment.objects.create(name="mine", site=store, segment=TILLS)
    shared = SavedSegment.objects.create(name="shared", site=None, owner=admin_user, segment=TILLS)
    theirs = SavedSegment.objects.create(name="theirs", site=other_store, segment=TILLS)

    listed = {row["id"] for row in manager.get("/api/v1/segments").json()["results"]}
    assert listed == {mine.pk, shared.pk}
    assert_error(manager.get(f"/api/v1/segments/{theirs.pk}"), 404)
    assert_error(manager.get("/api/v1/segments/999999999"), 404)
    # A shared segment is used by everyone who runs a site, but changed only by its owner.
    assert_error(manager.patch(f"/api/v1/segments/{shared.pk}", {"name": "x"}, format="json"), 403)
    assert_error(manager.delete(f"/api/v1/segments/{shared.pk}"), 403)
    assert manager.patch(f"/api/v1/segments/{mine.pk}", {"name": "renamed"}, format="json").status_code == 200
    assert SavedSegment.objects.get(pk=shared.pk).name == "shared"


def test_a_manager_cannot_save_a_segment_for_another_site_and_a_viewer_none(manager, store, other_store):
    assert_error(save(manager, site_id="site-other"), 400, field="site_id")
    viewer = token_client(SiteMembershipFactory(site=store, role=MembershipRole.VIEWER).user)
    assert_error(save(viewer, site_id="site-seg"), 403)
    assert_error(viewer.get("/api/v1/segments"), 403)
    assert not SavedSegment.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"segment": {}},
        {"segment": {"colour": ["red"]}},
        {"segment": {"status": ["on fire"]}},
        {"segment": "pos_terminal"},
        {"name": ""},
        {"name": "x" * 101},
    ],
)
def test_bad_segments_are_refused_with_the_one_error_shape(manager, body):
    error = assert_error(save(manager, site_id="site-seg", **body), 400)
    assert set(error["fields"]) & {"segment", "name"}
    assert not SavedSegment.objects.exists()


def test_a_job_from_a_saved_segment_targets_exactly_its_devices_and_keeps_its_copy(
    manager, store, manager_user
):
    wanted = [
        DeviceFactory(site=store, device_type="pos_terminal", status="online"),
        DeviceFactory(site=store, device_type="pos_terminal", status="online"),
    ]
    DeviceFactory(site=store, device_type="pos_terminal", status="offline")
    DeviceFactory(site=store, device_type="kiosk", status="online")
    DeviceFactory(device_type="pos_terminal", status="online")  # another store
    saved = save(manager, site_id="site-seg").json()

    preview = manager.post(
        "/jobs/preview", {"site_id": "site-seg", "saved_segment": saved["id"]}, format="json"
    ).json()
    assert preview["matching"] == 2
    response = manager.post(
        "/jobs",
        {"site_id": "site-seg", "action": "update_config", "saved_segment": saved["id"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    job = response.json()
    assert (job["saved_segment"], job["segment"]) == (saved["id"], TILLS)
    created = AuditLog.objects.get(event_type="job.created", job_id=job["id"])
    assert created.new_values["saved_segment"] == {"id": saved["id"], "name": "Online tills"}

    # Editing the saved segment afterwards changes nothing of the job.
    manager.patch(f"/segments/{saved['id']}", {"segment": {"device_type": ["kiosk"]}}, format="json")
    dispatch.dispatch_pass(job["id"])
    assert set(Delivery.objects.filter(job_id=job["id"]).values_list("device_id", flat=True)) == {
        d.pk for d in wanted
    }
    assert Job.objects.get(pk=job["id"]).segment == TILLS
    # Deleting it leaves the job's copy too.
    assert manager.delete(f"/segments/{saved['id']}").status_code == 204
    assert Job.objects.get(pk=job["id"]).segment == TILLS


def test_a_job_cannot_use_someone_elses_segment_or_two_segments(manager, store, other_store):
    theirs = SavedSegment.objects.create(name="theirs", site=other_store, segment=TILLS)
    mine = SavedSegment.objects.create(name="mine", site=store, segment=TILLS)
    job = {"site_id": "site-seg", "action": "update_config"}
    assert_error(
        manager.post("/jobs", {**job, "saved_segment": theirs.pk}, format="json"), 400, "saved_segment"
    )
    assert_error(
        manager.post("/jobs", {**job, "saved_segment": mine.pk, "segment": TILLS}, format="json"),
        400,
        "saved_segment",
    )
    assert not Job.objects.exists()


def test_the_admin_saves_a_segment_and_offers_it_on_the_job_form(admin_browser, store):
    add = reverse("admin:jobs_app_savedsegment_add")
    response = admin_browser.post(
        add, {"name": "Kiosks", "site": "", "segment": '{"device_type": ["kiosk"]}'}, follow=True
    )
    assert response.status_code == 200
    saved = SavedSegment.objects.get(name="Kiosks")
    assert (saved.site, saved.segment) == (None, {"device_type": ["kiosk"]})
    bad = admin_browser.post(add, {"name": "Bad", "site": "", "segment": '{"colour": ["red"]}'}, follow=True)
    assert "Unknown segment key" in bad.content.decode()
    assert not SavedSegment.objects.filter(name="Bad").exists()

    kiosk = DeviceFactory(site=store, device_type="kiosk")
    DeviceFactory(site=store, device_type="pos_terminal")
    page = admin_browser.get(reverse("admin:jobs_app_job_add")).content.decode()
    assert f'<option value="{saved.pk}">Kiosks</option>' in page
    admin_browser.post(
        reverse("admin:jobs_app_job_add"),
        {
            "site": store.pk,
            "action": "update_config",
            "priority": "normal",
            "payload": "{}",
            "segment": "{}",
            "saved_segment": saved.pk,
        },
    )
    job = Job.objects.get()
    assert (job.saved_segment, job.segment) == (saved, {"device_type": ["kiosk"]})
    dispatch.dispatch_pass(job.pk)
    assert list(Delivery.objects.filter(job=job).values_list("device_id", flat=True)) == [kiosk.pk]


def test_a_manager_in_the_admin_sees_only_their_segments(client, manager_user, store, other_store):
    mine = SavedSegment.objects.create(name="Alpha mine", site=store, segment=TILLS)
    SavedSegment.objects.create(name="Zebra theirs", site=other_store, segment=TILLS)
    manager_user.is_staff = True
    manager_user.save()
    client.force_login(manager_user)
    page = client.get(reverse("admin:jobs_app_savedsegment_changelist")).content.decode()
    assert "Alpha mine" in page and "Zebra theirs" not in page
    form = client.get(reverse("admin:jobs_app_job_add")).content.decode()
    assert f'<option value="{mine.pk}">Alpha mine</option>' in form and "Zebra theirs" not in form


def test_the_job_form_previews_the_chosen_targets_without_saving(admin_browser, store):
    DeviceFactory.create_batch(3, site=store, device_type="pos_terminal", status="online")
    DeviceFactory(site=store, device_type="kiosk", status="online")
    add = reverse("admin:jobs_app_job_add")
    assert 'name="_preview"' in admin_browser.get(add).content.decode()
    form = {
        "site": store.pk,
        "action": "update_config",
        "priority": "normal",
        "payload": '{"volume": 3}',
        "segment": '{"device_type": ["pos_terminal"]}',
        "max_in_flight_per_site": "1",
    }
    page = admin_browser.post(add, {**form, "_preview": "Preview"})
    assert page.status_code == 200
    text = page.content.decode()
    assert "<strong>3 devices</strong> at 1 site (3 online now)" in text
    assert "Please correct" not in text and "errornote" not in text  # numbers, not a mistake
    # 3 waves of one device at the one site; no finished job to measure yet, so the default.
    assert "about <strong>90 s</strong>: 3 wave(s) of at most 1 device(s) per site, about 30 s each" in text
    assert 'name="_save"' in text  # the confirmation
    assert "volume" in text  # the form comes back with what was entered
    assert not Job.objects.exists()
    assert admin_browser.post(add, form).status_code == 302
    assert Job.objects.count() == 1


def test_every_change_to_a_saved_segment_is_audited_once(manager, store, manager_user):
    segment_id = save(manager, site_id="site-seg").json()["id"]
    manager.patch(f"/segments/{segment_id}", {"name": "Online tills (north)"}, format="json")
    manager.patch(f"/segments/{segment_id}", {"name": "Online tills (north)"}, format="json")  # no change
    manager.delete(f"/segments/{segment_id}")

    rows = list(AuditLog.objects.filter(event_type__startswith="segment.").order_by("id"))
    assert [row.event_type for row in rows] == ["segment.created", "segment.updated", "segment.deleted"]
    assert all(row.actor == manager_user and row.site_ref == "site-seg" for row in rows)
    assert (rows[1].old_values, rows[1].new_values) == (
        {"name": "Online tills"},
        {"name": "Online tills (north)"},
    )
    assert rows[2].old_values["segment"] == TILLS


def test_a_manager_cannot_move_a_segment_out_of_their_own_reach(manager, store, admin_user, manager_user):
    # Site-less segments are changed only by their owner: making another's site segment
    # site-less would leave it in the hands of someone else (found by the OpenAPI fuzz).
    theirs = SavedSegment.objects.create(name="admin's", site=store, owner=admin_user, segment=TILLS)
    assert_error(manager.patch(f"/api/v1/segments/{theirs.pk}", {"site_id": None}, format="json"), 403)
    theirs.refresh_from_db()
    assert theirs.site == store
    assert not AuditLog.objects.filter(event_type="segment.updated").exists()

    # Their own segment may go site-less: they still own it.
    mine = SavedSegment.objects.create(name="mine", site=store, owner=manager_user, segment=TILLS)
    answer = manager.patch(f"/api/v1/segments/{mine.pk}", {"site_id": None}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["site"] is None
