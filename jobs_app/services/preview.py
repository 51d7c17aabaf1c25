"""Pre-flight numbers for a job not yet created (what the admin's review step and the API's
preview show): matching devices, how many are online or busy, and the expected duration."""

import math

from django.db.models import Count, Q

from devices_app.choices import DeviceStatus
from jobs_app.choices import DELIVERY_UNFINISHED, JobStatus
from jobs_app.models import Delivery, Job, SavedSegment
from jobs_app.services.common import setting
from jobs_app.services.targets import check_targets, segment_for_job, target_devices_query
from sites_app.models import Site


def job_preview(
    *,
    actor,
    site: Site,
    extra_sites=(),
    segment: dict | None = None,
    target_devices=(),
    batch_size: int | None = None,
    max_in_flight_per_site: int | None = None,
    saved_segment: SavedSegment | None = None,
    per_site: bool = False,
) -> dict:
    """Pre-flight numbers for a job not yet created: how many devices match, how many are
    online now, how many already have unfinished work, and the expected duration under the
    rollout policy: waves (the largest site's devices over `max_in_flight_per_site`) times
    what a wave took in recent jobs (`_wave_seconds`), with the basis said in words."""
    devices = list(target_devices)
    site_ids = check_targets(actor, site, list(extra_sites), devices)
    targets = target_devices_query(
        site_ids=site_ids,
        segment=segment_for_job(actor, segment, saved_segment),
        device_ids=[d.pk for d in devices] or None,
    )
    busy = Delivery.objects.filter(status__in=DELIVERY_UNFINISHED).values("device_id")
    numbers = targets.aggregate(
        matching=Count("pk"),
        online=Count("pk", filter=Q(status=DeviceStatus.ONLINE)),
        with_unfinished_work=Count("pk", filter=Q(pk__in=busy)),
    )
    largest_site = (
        targets.values("site_id").annotate(n=Count("pk")).order_by("-n").values_list("n", flat=True).first()
        or 0
    )
    if per_site:
        # The admin's review step: matching devices per site, the largest first (bounded).
        per_site_rows = list(
            targets.order_by()
            .values("site_id", "site__site_id", "site__name")
            .annotate(n=Count("pk"))
            .order_by("-n", "site__site_id")[:PREVIEW_SITES_LIMIT]
        )
    wave_seconds, basis = _wave_seconds()
    waves = 0
    if numbers["matching"]:
        # Each site works through its devices `max_in_flight` at a time; sites run in parallel.
        waves = math.ceil(largest_site / max_in_flight_per_site) if max_in_flight_per_site else 1
    extra = {"per_site": per_site_rows} if per_site else {}
    return {
        **numbers,
        **extra,
        "sites": len(site_ids),
        "largest_site_devices": largest_site,
        "batches": math.ceil(numbers["matching"] / (batch_size or Job._meta.get_field("batch_size").default)),
        "waves": waves,
        "expected_duration_seconds": math.ceil(waves * wave_seconds),
        "expected_duration_basis": (
            (
                f"{waves} wave(s) of at most {max_in_flight_per_site} device(s) per site, "
                if max_in_flight_per_site
                else "1 wave (no per-site limit: every device at once), "
            )
            + basis
            if waves
            else "no device matches"
        ),
    }


# How many sites the per-site preview lists.
PREVIEW_SITES_LIMIT = 50
# How many recent finished jobs the duration estimate is measured from.
ESTIMATE_SAMPLE_JOBS = 20


def _wave_seconds() -> tuple[float, str]:
    """How long one wave (every targeted device busy at once) takes: the median duration of
    the last finished jobs that ran without a per-site limit (each of those was one wave),
    or the HOMEPOT_JOBS_EXPECTED_SECONDS_PER_DEVICE guess when none has finished yet. Read
    through the (-created_at) index, a handful of rows."""
    durations = sorted(
        (done - started).total_seconds()
        for started, done in Job.objects.filter(
            status__in=(JobStatus.COMPLETED, JobStatus.FAILED),
            max_in_flight_per_site__isnull=True,
            started_at__isnull=False,
            completed_at__isnull=False,
        )
        .order_by("-created_at")
        .values_list("started_at", "completed_at")[:ESTIMATE_SAMPLE_JOBS]
    )
    if not durations:
        guess = setting("EXPECTED_SECONDS_PER_DEVICE", 30)
        return guess, f"about {guess} s each (a default: no job has finished yet to measure)"
    median = durations[len(durations) // 2]
    if len(durations) % 2 == 0:
        median = (durations[len(durations) // 2 - 1] + median) / 2
    median = max(median, 1.0)
    shown = f"{median:.0f} s" if median < 120 else f"{median / 60:.0f} min"
    return median, f"about {shown} each (the median of the last {len(durations)} finished job(s))"
