"""Writes of the jobs app, one file per subject (a newcomer finds a rule by the file name):

- `targets`: which devices a job reaches (sites, segment, hand-picked devices) and the
  actor's right to target them;
- `segments`: saved segments (named filters);
- `jobs`: a job's lifecycle as operators drive it (create, edit, cancel, pause, resume,
  retry, clone) and the scheduled start;
- `deliveries`: the per-device state machine (materialise, sent, push failures, time-outs,
  a device's ack and report, an operator cancelling one delivery);
- `answers`: device answers applied in bulk (HTTP and the MQTT bridge);
- `progress`: progress numbers, the rollup into the job's status, the failure threshold;
- `preview`: pre-flight numbers for a job not yet created;
- `rollout`: the rollout policy's rules the dispatcher consults (waves);
- `windows`: jobs that keep to the sites' maintenance windows (the claim filter, when to
  look again, which sites wait);
- `deferral`: a device's "not now" and the job's deferral policy that bounds it;
- `rollback`: undoing a job on the devices that took it (previous configuration);
- `enqueue`: the one seam to the dispatcher's Celery task (services never import
  jobs_app.tasks or jobs_app.dispatch: those stand above and call down);
- `common`: what the others share.

Callers use `from jobs_app import services; services.job_create(...)`: the names below are
re-exported for that.
"""

from jobs_app.services.answers import DeviceEvent, deliveries_apply_events
from jobs_app.services.common import AUDITED_FIELDS
from jobs_app.services.deliveries import (
    deadline_when_sent,
    deliveries_mark_sent,
    deliveries_materialise,
    deliveries_next_attempt_at,
    deliveries_push_failed,
    deliveries_time_out,
    delivery_acknowledge,
    delivery_cancel,
    delivery_defer,
    delivery_report,
    in_flight_by_site,
)
from jobs_app.services.enqueue import dispatch_request, dispatch_ticket_release
from jobs_app.services.jobs import (
    job_cancel,
    job_clone,
    job_create,
    job_mark_started,
    job_pause,
    job_resume,
    job_retry,
    job_update,
    jobs_start_due,
)
from jobs_app.services.preview import ESTIMATE_SAMPLE_JOBS, PREVIEW_SITES_LIMIT, job_preview
from jobs_app.services.progress import (
    job_check_failure_threshold,
    job_progress,
    job_progress_unmaterialised,
    job_rollup,
)
from jobs_app.services.rollback import job_rollback
from jobs_app.services.rollout import job_wave_approve, job_waves, wave_advance
from jobs_app.services.segments import SEGMENT_AUDITED_FIELDS, segment_create, segment_delete, segment_update
from jobs_app.services.targets import SEGMENT_KEYS, clean_segment, job_target_query, target_devices_query
from jobs_app.services.windows import (
    WindowGate,
    claim_filter,
    deliveries_next_offer_at,
    sites_waiting,
    window_default,
)

__all__ = (
    "WindowGate",
    "AUDITED_FIELDS",
    "ESTIMATE_SAMPLE_JOBS",
    "PREVIEW_SITES_LIMIT",
    "SEGMENT_AUDITED_FIELDS",
    "SEGMENT_KEYS",
    "DeviceEvent",
    "claim_filter",
    "clean_segment",
    "deliveries_apply_events",
    "deadline_when_sent",
    "deliveries_mark_sent",
    "deliveries_materialise",
    "deliveries_next_attempt_at",
    "deliveries_next_offer_at",
    "deliveries_push_failed",
    "deliveries_time_out",
    "delivery_acknowledge",
    "delivery_cancel",
    "delivery_defer",
    "delivery_report",
    "dispatch_request",
    "dispatch_ticket_release",
    "in_flight_by_site",
    "job_cancel",
    "job_check_failure_threshold",
    "job_clone",
    "job_create",
    "job_mark_started",
    "job_pause",
    "job_preview",
    "job_progress",
    "job_progress_unmaterialised",
    "job_resume",
    "job_retry",
    "job_rollback",
    "job_rollup",
    "job_target_query",
    "job_update",
    "job_wave_approve",
    "job_waves",
    "wave_advance",
    "jobs_start_due",
    "segment_create",
    "segment_delete",
    "segment_update",
    "sites_waiting",
    "target_devices_query",
    "window_default",
)
