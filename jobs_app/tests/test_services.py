import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory
from homepot.errors import Conflict
from jobs_app.choices import JobStatus
from jobs_app.models import Job
from jobs_app.services import job_cancel, job_create, job_update
from jobs_app.tests.factories import JobFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def test_job_create_queues_and_audits(admin_user):
    site = SiteFactory()
    job = job_create(actor=admin_user, site=site, action="update_config", payload={"tax_rate": 0.2})
    assert (job.status, job.created_by) == (JobStatus.QUEUED, admin_user)
    entry = AuditLog.objects.get()
    assert entry.new_values["payload"] == {"tax_rate": 0.2}
    assert entry.description == f"Job #{job.pk} (Update configuration) queued for {site.site_id}"


def test_a_scheduled_job_for_several_sites_is_audited_in_words(admin_user):
    import datetime

    from django.utils import timezone

    site, other = SiteFactory(), SiteFactory()
    job = job_create(
        actor=admin_user,
        site=site,
        extra_sites=[other],
        action="restart_pos_app",
        scheduled_at=timezone.now() + datetime.timedelta(hours=1),
    )
    assert AuditLog.objects.get(job=job).description == (
        f"Job #{job.pk} (Restart POS application) scheduled for {site.site_id} and 1 more site(s)"
    )


def test_job_create_refuses_an_unknown_action_and_stores_nothing(admin_user):
    with pytest.raises(ValidationError):
        job_create(actor=admin_user, site=SiteFactory(), action="format_disk")
    assert not Job.objects.exists() and not AuditLog.objects.exists()


@pytest.mark.parametrize(
    ("role", "allowed"), [(MembershipRole.MANAGER, True), (MembershipRole.VIEWER, False)]
)
def test_only_managers_of_the_site_create_jobs(role, allowed):
    site = SiteFactory()
    member = SiteMembershipFactory(site=site, role=role).user
    if allowed:
        job_create(actor=member, site=site, action="restart_pos_app")
    else:
        with pytest.raises(PermissionDenied):
            job_create(actor=member, site=site, action="restart_pos_app")
    assert Job.objects.exists() is allowed


def test_a_manager_cannot_retarget_a_job_to_another_site():
    mine, theirs = SiteFactory(), SiteFactory()
    manager = SiteMembershipFactory(site=mine).user
    job = JobFactory(site=mine)
    with pytest.raises(PermissionDenied):
        job_update(actor=manager, job=job, site=theirs)
    job.refresh_from_db()
    assert job.site == mine


def test_priority_may_change_at_any_time_but_the_payload_only_while_queued(admin_user):
    job = JobFactory(status=JobStatus.SENT, priority="normal")
    job_update(actor=admin_user, job=job, priority="critical")
    with pytest.raises(Conflict):
        job_update(actor=admin_user, job=job, payload={"gateway_url": "https://evil.example.com"})
    job.refresh_from_db()
    assert job.priority == "critical"
    assert [log.new_values for log in AuditLog.objects.all()] == [{"priority": "critical"}]


def test_status_is_not_editable_by_hand(admin_user):
    with pytest.raises(Conflict):
        job_update(actor=admin_user, job=JobFactory(), status=JobStatus.COMPLETED)


def test_cancel_is_idempotent_and_refuses_finished_jobs(admin_user):
    job = JobFactory(status=JobStatus.SENT)
    job_cancel(actor=admin_user, job=job)
    job_cancel(actor=admin_user, job=job)
    job.refresh_from_db()
    assert job.status == JobStatus.CANCELLED and job.completed_at is not None
    assert AuditLog.objects.filter(event_type="job.cancelled").count() == 1

    with pytest.raises(Conflict):
        job_cancel(actor=admin_user, job=JobFactory(status=JobStatus.COMPLETED))
