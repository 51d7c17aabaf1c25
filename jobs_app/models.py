from django.conf import settings
from django.db import models

from accounts.scoping import ScopedQuerySet, scoped_site_ids
from jobs_app.choices import (
    DELIVERY_UNFINISHED,
    JOB_ACTIVE_STATUSES,
    DeferralExhausted,
    DeliveryStatus,
    JobAction,
    JobPriority,
    JobStatus,
)

# Measured (docs/performance.md): 100,000 devices are all `sent` in ~6 s with batches of
# 2,000 against 10-13 s with 500; per-batch cost is a constant few queries, so fewer, larger
# batches win. A pause still takes effect at the next batch (well under a second).
DEFAULT_BATCH_SIZE = 2000
# A till in the middle of a sale may say "not now" this often, for this long in total, per
# job (docs/jobs.md, "Rollout policy: deferral"): enough to get past a lunch rush. The new
# columns also carry database defaults, so raw INSERTs (the dispatcher's materialising, the
# legacy importer) need not name them.
DEFAULT_MAX_DEFERRALS = 3
DEFAULT_MAX_DEFERRAL_SECONDS = 3600


class JobQuerySet(ScopedQuerySet):
    scope_path = "site"

    def active(self):
        return self.filter(status__in=JOB_ACTIVE_STATUSES)


class Job(models.Model):
    """A configuration update or other action sent to devices, tracked per device (Delivery).

    Targets: the primary `site` (which decides who may see the job), any `extra_sites`,
    narrowed by `segment` (device_type / status / firmware_version lists) and, when given,
    by the hand-picked `target_devices`. The deliveries are created from these once, by the
    dispatcher (`materialised_at`); from then on the deliveries are the truth.
    """

    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="jobs")
    extra_sites = models.ManyToManyField(
        "sites_app.Site", blank=True, related_name="extra_site_jobs", help_text="More sites to target."
    )
    segment = models.JSONField(
        default=dict,
        blank=True,
        help_text='Only devices matching all given lists, e.g. {"device_type": ["pos_terminal"], '
        '"status": ["online"], "firmware_version": ["4.2.1"]}.',
    )
    target_devices = models.ManyToManyField(
        "devices_app.Device", blank=True, related_name="+", help_text="Only these devices (hand-picked)."
    )
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
    scheduled_at = models.DateTimeField(null=True, blank=True, help_text="Start at this time (empty: now).")
    ttl = models.DurationField(
        "delivery deadline",
        null=True,
        blank=True,
        help_text="How long each delivery may take before it times out (empty: no deadline).",
    )
    batch_size = models.PositiveIntegerField(default=DEFAULT_BATCH_SIZE)
    max_in_flight_per_site = models.PositiveIntegerField(
        null=True, blank=True, help_text="At most this many devices per site busy at once (empty: no limit)."
    )
    failure_threshold_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="Pause the rollout when more than this % of answers are failures."
    )
    within_maintenance_windows = models.BooleanField(
        "only inside maintenance windows",
        default=False,
        db_default=False,  # rows written by raw SQL (the legacy import) keep to no windows
        help_text="Reach each site's devices only while the site's maintenance window is open (its "
        "trading hours are over) and never on its blackout dates. Default: the action's "
        "(HOMEPOT_JOBS_WINDOW_ACTIONS).",
    )
    max_in_flight = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="At most this many of the job's devices busy at once, across all sites (empty: no limit).",
    )
    # Waves (staged rollout, jobs_app/services/rollout.py): a canary of `rollout_canary`
    # devices at distinct sites, then waves up to each cumulative percent of `rollout_waves`;
    # each wave opens only when the one before has finished with a success rate of at least
    # `wave_gate_percent`, after `wave_soak`, and, with `wave_approval`, a person's approval.
    rollout_canary = models.PositiveIntegerField(
        null=True, blank=True, help_text="Canary: this many devices first, each at a different site."
    )
    rollout_waves = models.JSONField(
        default=list,
        null=True,  # rows written by raw SQL (the legacy import) have no waves
        blank=True,
        help_text="Cumulative percent of the devices reached by each wave, e.g. [1, 10, 50, 100].",
    )
    wave_gate_percent = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Open the next wave only when at least this % of the last wave's answers succeeded "
        "(empty: 100).",
    )
    wave_soak = models.DurationField(
        null=True, blank=True, help_text="Wait this long after a wave has passed before the next opens."
    )
    wave_approval = models.BooleanField(
        default=False,
        db_default=False,
        help_text="A person approves each next wave (button on the job page, or the API).",
    )
    # Set when the deliveries are materialised: how many waves the job has (1: no waves).
    wave_count = models.PositiveSmallIntegerField(default=1, db_default=1, editable=False)
    # The highest wave whose deliveries may be sent (0: the first).
    wave_open = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    # When the open wave was seen finished and at or above its gate (the soak counts from here).
    wave_passed_at = models.DateTimeField(null=True, blank=True, editable=False)
    status_reason = models.TextField(blank=True, help_text="Why the job is paused or failed.")
    # Device-side deferral ("sale in progress"): the policy that bounds it.
    max_deferrals = models.PositiveSmallIntegerField(
        default=DEFAULT_MAX_DEFERRALS,
        db_default=DEFAULT_MAX_DEFERRALS,
        help_text='How many times each device may answer "not now" (0: never).',
    )
    max_deferral_seconds = models.PositiveIntegerField(
        default=DEFAULT_MAX_DEFERRAL_SECONDS,
        db_default=DEFAULT_MAX_DEFERRAL_SECONDS,
        help_text="The most delay each device may ask for in total, in seconds.",
    )
    deferral_exhausted = models.CharField(
        "after the deferral limit",
        max_length=8,
        choices=DeferralExhausted.choices,
        default=DeferralExhausted.FORCE,
        db_default=DeferralExhausted.FORCE,
        help_text="What happens when a device that has used up its deferrals asks again.",
    )
    rollback_on_failure = models.BooleanField(
        default=False,
        db_default=False,
        help_text="When the failure threshold pauses the job, roll the devices that took the change "
        "back to their previous configuration (a rollback job).",
    )
    # The job this one undoes (a rollback job); the reverse, `rolled_back_by`, is the link
    # from the original. One rollback per job, held by the database.
    rollback_of = models.OneToOneField(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="rolled_back_by",
        editable=False,
    )
    materialised_at = models.DateTimeField(null=True, blank=True, editable=False)
    # When the one dispatch pass that is due to run for this job (enqueued, or about to be)
    # should start; empty: none is. Also the pass's ticket: the message carries this value,
    # and only the pass holding it clears it (jobs_app.services.dispatch_request).
    dispatch_due_at = models.DateTimeField(null=True, blank=True, editable=False)
    cloned_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Where `segment` came from, for the record: the filter itself is copied onto the job
    # when it is created, so editing the saved segment later never changes a running job.
    saved_segment = models.ForeignKey(
        "jobs_app.SavedSegment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="Use this saved filter as the segment (copied when the job is created).",
    )
    legacy_id = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Its id in the older HOMEPOT (imported jobs only)."
    )

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
            models.CheckConstraint(condition=models.Q(batch_size__gte=1), name="jobs_batch_size_positive"),
            models.UniqueConstraint(
                fields=["legacy_id"],
                condition=models.Q(legacy_id__isnull=False),
                name="jobs_legacy_id_unique",
            ),
            models.CheckConstraint(
                condition=models.Q(max_in_flight_per_site__isnull=True)
                | models.Q(max_in_flight_per_site__gte=1),
                name="jobs_max_in_flight_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(failure_threshold_percent__isnull=True)
                | models.Q(failure_threshold_percent__lte=100),
                name="jobs_failure_threshold_percent",
            ),
            models.CheckConstraint(
                condition=models.Q(max_in_flight__isnull=True) | models.Q(max_in_flight__gte=1),
                name="jobs_max_in_flight_total_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(rollout_canary__isnull=True) | models.Q(rollout_canary__gte=1),
                name="jobs_rollout_canary_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(wave_gate_percent__isnull=True) | models.Q(wave_gate_percent__lte=100),
                name="jobs_wave_gate_percent",
            ),
            models.CheckConstraint(
                condition=models.Q(wave_open__lt=models.F("wave_count")), name="jobs_wave_open_in_range"
            ),
            models.CheckConstraint(
                condition=models.Q(deferral_exhausted__in=DeferralExhausted.values),
                name="jobs_deferral_exhausted_valid",
            ),
        ]
        indexes = [
            models.Index(fields=["site", "status", "-created_at"], name="jobs_site_status_created"),
            models.Index(fields=["status", "-created_at"], name="jobs_status_created"),
            models.Index(fields=["-created_at"], name="jobs_created"),
            # The beat task's "scheduled jobs now due" probe.
            models.Index(
                fields=["scheduled_at"],
                condition=models.Q(status=JobStatus.SCHEDULED),
                name="jobs_scheduled_due",
            ),
        ]

    def __str__(self) -> str:
        return f"Job #{self.pk}: {self.get_action_display()}"


class DeliveryQuerySet(ScopedQuerySet):
    scope_path = "job__site"

    def unfinished(self):
        return self.filter(status__in=DELIVERY_UNFINISHED)


class Delivery(models.Model):
    """One device's copy of a job, with its own progress. Unique per (job, device).

    Every transition is a conditional UPDATE (`WHERE status IN (allowed sources)`), so a
    replayed batch or a repeated device report changes nothing.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="deliveries")
    device = models.ForeignKey("devices_app.Device", on_delete=models.CASCADE, related_name="deliveries")
    # The device's site when the job was launched: "in flight per site" counts without a join.
    site = models.ForeignKey("sites_app.Site", on_delete=models.CASCADE, related_name="+")
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING, db_index=False
    )
    attempts = models.PositiveIntegerField(default=0, help_text="Push attempts made.")
    last_error = models.TextField(blank=True)
    result = models.JSONField(null=True, blank=True, help_text="What the device reported with its outcome.")
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    # After a failed push (the push backoff) or a device's deferral: not offered again
    # before this time.
    next_attempt_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The job's wave this delivery belongs to (0: the first; every delivery of a job without
    # waves), assigned set-based when the deliveries are materialised.
    wave = models.PositiveSmallIntegerField(default=0, db_default=0, editable=False)
    # Device-side deferral: how often and how long (seconds, as granted) the device said
    # "not now", its last reason, and whether the policy ran out and forced the work on it.
    defer_count = models.PositiveSmallIntegerField(default=0, db_default=0)
    deferred_seconds = models.PositiveIntegerField(default=0, db_default=0)
    defer_reason = models.CharField(max_length=500, blank=True, default="", db_default="")
    forced = models.BooleanField(
        default=False,
        db_default=False,
        help_text="Offered again after the deferral limit: further deferrals are ignored.",
    )
    # The work for this device when it differs from the job's payload (a rollback job
    # restores each device's own previous values); null: the job's payload.
    payload = models.JSONField(null=True, blank=True)
    # What the device had before the change, for the settings the job touches: reported by
    # the device with its outcome, else HOMEPOT's own record (Device.config,
    # Device.firmware_version). Recorded when the delivery completes; what a rollback restores.
    previous_config = models.JSONField(null=True, blank=True)

    objects = DeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["job", "device"], name="jobs_delivery_one_per_device"),
            models.CheckConstraint(
                condition=models.Q(status__in=DeliveryStatus.values), name="jobs_delivery_status_valid"
            ),
        ]
        indexes = [
            # Progress counts (index-only), the dispatcher's keyset walk over pending rows
            # and the deliveries list filtered by status, all one range of this index.
            models.Index(fields=["job", "status", "id"], name="jobs_delivery_job_status"),
            # The dispatcher's claim (one wave's pending rows in id order) and each wave's
            # numbers on the job page and its gate (index-only counts per wave and status).
            models.Index(fields=["job", "wave", "status", "id"], name="jobs_delivery_job_wave"),
            # A device's poll: its pending/sent work.
            models.Index(fields=["device", "status"], name="jobs_delivery_device_status"),
            # The time-out sweep: unfinished deliveries past their deadline.
            models.Index(
                fields=["deadline"],
                condition=models.Q(status__in=DELIVERY_UNFINISHED, deadline__isnull=False),
                name="jobs_delivery_deadline",
            ),
        ]

    def __str__(self) -> str:
        return f"Delivery #{self.pk} of job #{self.job_id} to device #{self.device_id}"


class SavedSegmentQuerySet(ScopedQuerySet):
    """Saved filters are a targeting tool, so they follow the *change* scope: a manager sees
    and uses the segments of the sites they may change, and the site-less ones (shared by
    everyone who runs a site); edits them only for those sites, and site-less ones only if
    they own them. Admins reach all. Viewers (who create no jobs) reach none."""

    scope_path = "site"

    def for_user(self, user, action: str = "view"):
        site_ids = scoped_site_ids(user, "change")
        if site_ids is None:
            return self
        if not site_ids.exists():
            return self.none()
        if action == "change":
            return self.filter(models.Q(site__in=site_ids) | models.Q(site__isnull=True, owner=user))
        return self.filter(models.Q(site__in=site_ids) | models.Q(site__isnull=True))


class SavedSegment(models.Model):
    """A named device filter (the same JSON as `Job.segment`) to target jobs with."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    site = models.ForeignKey(
        "sites_app.Site",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="saved_segments",
        help_text="Only the managers of this site may use it (empty: everyone who runs a site).",
    )
    segment = models.JSONField(
        default=dict,
        help_text='Devices matching all given lists, e.g. {"device_type": ["pos_terminal"], '
        '"firmware_version": ["4.2.1"]}.',
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = SavedSegmentQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["site", "name"], name="jobs_segment_site_name")]

    def __str__(self) -> str:
        return self.name
