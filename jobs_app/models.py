from django.conf import settings
from django.db import models

from accounts.scoping import ScopedQuerySet
from jobs_app.choices import JOB_ACTIVE_STATUSES, JobAction, JobPriority, JobStatus


class JobQuerySet(ScopedQuerySet):
    scope_path = "site"

    def active(self):
        return self.filter(status__in=JOB_ACTIVE_STATUSES)


class Job(models.Model):
    """A configuration update or other action sent to the devices of a site.

    Per-device delivery tracking (one row per job and device) arrives with orchestration;
    until then the job's own status records where it is in the progression.
    """

    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="jobs")
    action = models.CharField(max_length=64, choices=JobAction.choices)
    description = models.TextField(blank=True)
    payload = models.JSONField(default=dict, blank=True)
    priority = models.CharField(max_length=16, choices=JobPriority.choices, default=JobPriority.NORMAL)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="created_jobs",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(action__in=JobAction.values), name="jobs_action_valid"),
            models.CheckConstraint(
                condition=models.Q(priority__in=JobPriority.values), name="jobs_priority_valid"
            ),
            models.CheckConstraint(condition=models.Q(status__in=JobStatus.values), name="jobs_status_valid"),
            models.CheckConstraint(
                condition=models.Q(completed_at__isnull=True)
                | models.Q(started_at__isnull=True)
                | models.Q(completed_at__gte=models.F("started_at")),
                name="jobs_completed_after_started",
            ),
        ]
        indexes = [
            models.Index(fields=["site", "status", "-created_at"], name="jobs_site_status_created"),
            models.Index(fields=["status", "-created_at"], name="jobs_status_created"),
            models.Index(fields=["-created_at"], name="jobs_created"),
        ]

    def __str__(self) -> str:
        return f"Job #{self.pk}: {self.get_action_display()}"
