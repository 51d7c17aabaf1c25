"""Jobs that keep to the sites' maintenance windows (trading hours): the claim filter the
dispatcher adds, when such a job's next pass is worth running, and which of its sites are
waiting. The rule of when a site is open is sites_app.windows (SQL, set-based)."""

import datetime
import time

from django.db.models import BooleanField, Count, Min, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone

from jobs_app.choices import DeliveryStatus
from jobs_app.models import Delivery, Job
from jobs_app.services.common import setting
from jobs_app.services.deliveries import deliveries_next_attempt_at
from sites_app import windows
from sites_app.models import Site


def window_default(action: str) -> bool:
    """Whether jobs of `action` keep to maintenance windows unless told otherwise."""
    return action in setting("WINDOW_ACTIONS", ())


def claim_filter(job: Job) -> Q:
    """Only deliveries whose site is inside a maintenance window now (the rule evaluated in
    the statement itself), or nothing for a job that does not keep to windows. The
    dispatcher uses a WindowGate instead, which reads the open sites once per few seconds."""
    if not job.within_maintenance_windows:
        return Q()
    return windows.open_sites_filter("site_id")


class WindowGate:
    """The open sites for one dispatch pass of `job`: one set-based statement
    (sites_app.windows) read at the pass's first batch and again for any batch claimed more
    than HOMEPOT_JOBS_WINDOW_REFRESH_SECONDS later, so a batch pays a hashed lookup of its
    rows' sites, not the time-zone arithmetic over every site. A window that closes during
    a pass is honoured within that many seconds."""

    def __init__(self, job: Job):
        self.job = job
        self._open: list[int] | None = None
        self._read_at = 0.0

    def claim_filter(self) -> Q:
        if not self.job.within_maintenance_windows:
            return Q()
        if self._open is None or time.monotonic() - self._read_at > setting("WINDOW_REFRESH_SECONDS", 10):
            self._open = windows.open_site_ids()
            self._read_at = time.monotonic()
        # One array parameter (`= ANY(%s)`), not one placeholder per site as `__in` would
        # send: thousands of them cost more to build and parse than the claim itself.
        return Q(
            RawSQL(  # noqa: S611 - fixed SQL, the ids a parameter
                f'"{Delivery._meta.db_table}"."site_id" = ANY(%s)', [self._open], output_field=BooleanField()
            )
        )


def _due(now) -> Q:
    return Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)


def deliveries_next_offer_at(job: Job) -> datetime.datetime | None:
    """The earliest time one of the job's pending deliveries may be offered: now when one
    could go now; for a job that keeps to windows and has only closed sites left, the
    earliest opening among the sites still waiting (capped at
    HOMEPOT_JOBS_WINDOW_RECHECK_SECONDS, so an edited schedule is seen) or the end of a
    push backoff if sooner. None when nothing is pending. Reads only."""
    if not job.within_maintenance_windows:
        return deliveries_next_attempt_at(job.pk)
    now = timezone.now()
    # Later waves wait for their gate, which wakes the dispatcher itself.
    pending = Delivery.objects.filter(job_id=job.pk, status=DeliveryStatus.PENDING, wave__lte=job.wave_open)
    if not pending.exists():
        return None
    backoff = pending.aggregate(first=Min("next_attempt_at"))["first"]
    if pending.filter(_due(now), site_id__in=windows.open_site_ids()).exists():
        return now
    waiting = Site.objects.filter(pk__in=pending.values("site_id"))
    recheck = now + datetime.timedelta(seconds=setting("WINDOW_RECHECK_SECONDS", 900))
    times = [recheck, windows.earliest_opening(waiting)]
    if backoff and backoff > now:
        times.append(backoff)
    return min(t for t in times if t is not None)


def sites_waiting(job: Job, limit: int) -> list[dict]:
    """The job's sites with pending deliveries outside their window now, the soonest to
    open first: site, time zone, pending count and next opening (None: no window in the
    coming weeks). At most `limit`, from one GROUP BY and one next-opening statement."""
    if not job.within_maintenance_windows:
        return []
    now = windows.now()
    rows = list(
        Delivery.objects.filter(job_id=job.pk, status=DeliveryStatus.PENDING)
        .exclude(site_id__in=windows.open_site_ids(now))
        .order_by()
        .values("site_id", "site__site_id", "site__name", "site__timezone")
        .annotate(pending=Count("id"))
    )
    openings = windows.next_openings([row["site_id"] for row in rows], now)
    for row in rows:
        row["opens_at"] = openings.get(row["site_id"])
    far = now + datetime.timedelta(days=3650)
    rows.sort(key=lambda row: (row["opens_at"] or far, row["site__site_id"]))
    return rows[:limit]
