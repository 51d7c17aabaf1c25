"""What the jobs services share: the audited fields of a job, the app's settings, and how
an operator action takes hold of a job (locked, in the actor's scope)."""

from django.conf import settings

from accounts.scoping import require_site_access
from homepot.errors import Conflict
from jobs_app.models import Job
from monitoring_app.services import lock_for_change, snapshot

AUDITED_FIELDS = (
    "site",
    "action",
    "description",
    "payload",
    "priority",
    "status",
    "segment",
    "scheduled_at",
    "batch_size",
    "max_in_flight_per_site",
    "failure_threshold_percent",
    "within_maintenance_windows",
    "max_in_flight",
    "rollout_canary",
    "rollout_waves",
    "wave_gate_percent",
    "wave_approval",
    "max_deferrals",
    "max_deferral_seconds",
    "deferral_exhausted",
    "rollback_on_failure",
)


def job_snapshot(job: Job) -> dict:
    """The audited fields, JSON-ready (the deadline as seconds)."""
    return {
        **snapshot(job, AUDITED_FIELDS),
        "ttl_seconds": job.ttl.total_seconds() if job.ttl else None,
        "wave_soak_seconds": job.wave_soak.total_seconds() if job.wave_soak else None,
    }


def setting(name: str, default):
    return getattr(settings, f"HOMEPOT_JOBS_{name}", default)


def locked_job(actor, job: Job) -> Job:
    job = lock_for_change(Job.objects.select_related("site"), job.pk)
    require_site_access(actor, job.site, "change")
    return job


def refuse_finished(job: Job, verb: str) -> None:
    raise Conflict(
        f"Job #{job.pk} is {job.get_status_display().lower()}: it cannot be {verb}.", code="job_not_active"
    )


def refuse_rolled_back(job: Job, verb: str) -> None:
    """A job whose change a rollback job undoes must not send that change again."""
    undone = Job.objects.filter(rollback_of=job.pk).values_list("pk", flat=True).first()
    if undone:
        raise Conflict(
            f"Job #{job.pk} was rolled back by job #{undone}: it cannot be {verb}.", code="job_rolled_back"
        )
