"""The jobs API's planned representation (jobs_app.api.serializers.PlannedRepresentationMixin)
gives what DRF's own Serializer.to_representation gives, job by job, for jobs with every
field set and left empty, as an admin and as a store manager who sees only part of a job."""

import datetime

import pytest
from django.test import RequestFactory
from django.utils import timezone

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from devices_app.tests.factories import DeviceFactory
from jobs_app import services
from jobs_app.api.serializers import (
    JobDetailSerializer,
    JobSerializer,
    PlannedRepresentationMixin,
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
