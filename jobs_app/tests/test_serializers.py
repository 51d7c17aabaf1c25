"""The jobs API's serializers against DRF's own loops: the planned representation
(PlannedRepresentationMixin) gives what Serializer.to_representation gives, job by job, for
jobs with every field set and left empty, as an admin and as a store manager who sees only part
of a job; the create serializer's validation without the absent fields DRF would skip
(AbsentFieldsSkippedMixin) gives DRF's validated data and errors, in DRF's order."""

import datetime

import pytest
from django.test import RequestFactory
from django.utils import timezone
from rest_framework import serializers

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app import services
from jobs_app.api.serializers import (
    JobCreateSerializer,
    JobDetailSerializer,
    JobSerializer,
    PlannedRepresentationMixin,
    fields_skipped_when_absent,
    representation_plan,
)
from jobs_app.choices import JobStatus
from jobs_app.models import Job, SavedSegment
from jobs_app.selectors import job_as_created, job_list
from jobs_app.tests.factories import JobFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def _drf(serializer, job) -> dict:
    """DRF's own loop, bypassing the plan."""
    return super(PlannedRepresentationMixin, serializer).to_representation(job)


def _request(user):
    request = RequestFactory().get("/api/v1/jobs")
    request.user = user
    return request


@pytest.fixture
def jobs(admin_user):
    home, other = SiteFactory(), SiteFactory()
    devices = DeviceFactory.create_batch(2, site=home)
    saved = SavedSegment.objects.create(name="tills", segment={"device_type": ["pos_terminal"]}, site=home)
    full = services.job_create(
        actor=admin_user,
        site=home,
        action="update_config",
        payload={"receipt_footer": "Thanks!"},
        extra_sites=[other],
        target_devices=devices[:1],
        saved_segment=saved,
        scheduled_at=timezone.now() + datetime.timedelta(hours=1),
        description="  every field  ",
        ttl=datetime.timedelta(minutes=10),
        rollout_canary=1,
        rollout_waves=[50],
        wave_gate_percent=90,
        wave_soak=datetime.timedelta(seconds=30),
        max_in_flight=3,
        max_in_flight_per_site=1,
        failure_threshold_percent=20,
        within_maintenance_windows=True,
    )
    clone = services.job_clone(actor=admin_user, job=JobFactory(site=home))
    orphan = JobFactory(site=other, created_by=None, status=JobStatus.COMPLETED)
    Job.objects.filter(pk=orphan.pk).update(
        started_at=timezone.now() - datetime.timedelta(minutes=5), completed_at=timezone.now()
    )
    rollback = JobFactory(site=home, rollback_of=orphan)
    return home, [full, clone, orphan, rollback]


@pytest.mark.parametrize("serializer_class", [JobSerializer, JobDetailSerializer])
def test_every_job_is_represented_as_drf_represents_it(jobs, admin_user, serializer_class):
    home, _ = jobs
    manager = SiteMembershipFactory(site=home, role=MembershipRole.MANAGER).user
    for user in (admin_user, manager):
        for job in job_list(user=user):
            serializer = serializer_class(job, context={"request": _request(user)})
            assert serializer.data == _drf(serializer_class(job, context={"request": _request(user)}), job)
            assert list(serializer.data) == serializer_class.Meta.fields


def test_a_created_job_is_represented_as_drf_represents_it(admin_user):
    site = SiteFactory()
    job = job_as_created(
        services.job_create(actor=admin_user, site=site, action="restart_pos_app"), had_targets=False
    )
    context = {"request": _request(admin_user), "created_now": True}
    assert JobDetailSerializer(job, context=context).data == _drf(
        JobDetailSerializer(job, context=context), job
    )


def test_the_job_serializers_are_planned():
    # A field class the plan does not know makes a serializer fall back to DRF's loop: the
    # same answer, slower. This says which ones keep the plan.
    for serializer_class in (JobSerializer, JobDetailSerializer):
        plan = representation_plan(serializer_class)
        assert plan is not None
        assert [name for name, _, _ in plan] == serializer_class.Meta.fields


class _DrfLoop(JobCreateSerializer):
    """The create serializer with DRF's own walk over every writable field."""

    @property
    def _writable_fields(self):
        return serializers.Serializer._writable_fields.fget(self)


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"site_id": "site-9", "action": "restart_pos_app"}, True),
        ({"site_id": "site-9", "action": "restart_pos_app", "description": " bench ", "batch_size": 5}, True),
        (
            {
                "site_id": "site-9",
                "action": "update_config",
                "payload": {"tax_rate": 0.2},
                "segment": {"device_type": ["pos_terminal"]},
                "priority": "high",
                "scheduled_at": "2030-01-01T10:00:00Z",
                "ttl_seconds": 600,
                "failure_threshold_percent": 10,
                "within_maintenance_windows": None,
                "max_in_flight": 3,
                "rollout_canary": 1,
                "rollout_waves": [50],
                "wave_gate_percent": 90,
                "wave_soak_seconds": 0,
                "wave_approval": True,
                "max_deferrals": 0,
                "max_deferral_seconds": 60,
                "deferral_exhausted": "skip",
                "rollback_on_failure": True,
                "max_in_flight_per_site": None,
                "saved_segment": None,
            },
            True,
        ),
        ({"site_id": "site-9", "action": "nope", "batch_size": 0, "ttl_seconds": "soon"}, False),
        ({"action": "update_config", "rollout_waves": [50, 10], "description": 3}, False),
    ],
    ids=["minimal", "some", "every field", "bad", "bad and missing"],
)
def test_validation_without_the_absent_fields_is_drfs(admin_user, body, valid):
    SiteFactory(site_id="site-9")
    context = {"request": _request(admin_user)}
    ours, drfs = JobCreateSerializer(data=body, context=context), _DrfLoop(data=body, context=context)
    assert ours.is_valid() is drfs.is_valid() is valid
    assert ours.errors == drfs.errors and list(ours.errors) == list(drfs.errors)
    if valid:
        assert dict(ours.validated_data) == dict(drfs.validated_data)


def test_the_fields_skipped_when_absent_are_those_without_a_default():
    skipped = fields_skipped_when_absent(JobCreateSerializer)
    assert "batch_size" in skipped and "rollout_waves" in skipped
    # Required, or given a default when absent: never left out.
    assert not skipped & {
        "site_id",
        "action",
        "payload",
        "segment",
        "description",
        "priority",
        "scheduled_at",
    }
