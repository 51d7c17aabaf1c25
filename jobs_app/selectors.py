"""Reads of the jobs app. Every read is scoped with the one rule, `for_user`."""

import functools

from django.db.models import Count, F, Prefetch, QuerySet, prefetch_related_objects

from accounts.scoping import scoped_site_ids
from devices_app.models import Device
from jobs_app.models import Delivery, Job
from sites_app.models import Site


def visible_site_ids(user) -> set[int] | None:
    """The ids of the sites `user` may see; None for "every site" (admins). A job spread
    over several stores shows each member only its own stores' side."""
    site_ids = scoped_site_ids(user, "view")
    return None if site_ids is None else set(site_ids.values_list("site_id", flat=True))


def job_list(*, user) -> QuerySet[Job]:
    """The jobs `user` may see (by the job's primary site), with what a page shows."""
    return (
        Job.objects.for_user(user)
        .select_related("site", "created_by")
        # The reverse of the one-to-one rollback link, in the same query (a LEFT JOIN on
        # the unique rollback_of index).
        .annotate(rolled_back_by_id=F("rolled_back_by__id"))
        .prefetch_related(*_target_prefetches())
    )


def _target_prefetches() -> tuple[Prefetch, Prefetch]:
    return (
        Prefetch("extra_sites", queryset=Site.objects.only("pk", "site_id")),
        Prefetch("target_devices", queryset=Device.objects.only("pk", "device_id", "site_id")),
    )


def job_as_created(job: Job, *, had_targets: bool) -> Job:
    """`job`, just created by this request, carrying what job_list joins and prefetches,
    without reading the row back: its site and creator are already attached, a new job has
    no rollback, and its extra sites and hand-picked devices are empty unless the request
    named some (`had_targets`: then read, one query each, as job_list does)."""
    job.rolled_back_by_id = None
    if had_targets:
        prefetch_related_objects([job], *_target_prefetches())
    else:
        job._prefetched_objects_cache = dict(_no_targets())
        # Read by JobSerializer instead of the two related managers: building each manager
        # was 5 % of a job creation's CPU, to list nothing.
        job.created_without_targets = True
    return job


@functools.cache
def _no_targets() -> dict:
    """The prefetch cache of a job without extra sites or hand-picked devices. Built once: an
    empty QuerySet never holds a row, so every new job may share it (1 % of a creation's CPU
    to build per request, docs/performance.md, issue 11, jobs4)."""
    return {"extra_sites": Site.objects.none(), "target_devices": Device.objects.none()}


def job_deliveries(*, job: Job, user=None) -> QuerySet[Delivery]:
    """The deliveries of a job the caller may already see, with device and site ids: only
    those at sites `user` may see (a job can reach other stores too)."""
    deliveries = Delivery.objects.filter(job=job).select_related("device", "site").order_by("id")
    if user is not None:
        site_ids = scoped_site_ids(user, "view")
        if site_ids is not None:
            deliveries = deliveries.filter(site__in=site_ids)
    return deliveries


def device_commands(*, device: Device, limit: int) -> list[Delivery]:
    """A polling device's mailbox: its deliveries sent to it or acknowledged and not yet
    finished, oldest first (the (device, status) index)."""
    from jobs_app.choices import DELIVERY_IN_FLIGHT

    return list(
        Delivery.objects.filter(device=device, status__in=DELIVERY_IN_FLIGHT)
        .select_related("job")
        .order_by("id")[:limit]
    )


def device_deliveries(*, device: Device, limit: int = 20) -> list[Delivery]:
    """The device page's recent deliveries (newest first, bounded), with their job: status,
    deferrals and next offer time, and the previous configuration recorded."""
    return list(Delivery.objects.filter(device=device).select_related("job").order_by("-id")[:limit])


# The job page lists at most this many sites in its per-site breakdown (the busiest first).
SITE_BREAKDOWN_LIMIT = 50


def job_site_breakdown(*, job: Job, user=None) -> list[dict]:
    """Per site of the job (those `user` may see): devices, and how many completed, failed
    (or timed out), are in progress, waiting or cancelled; busiest sites first, at most
    SITE_BREAKDOWN_LIMIT. One GROUP BY (site, status) over the job's deliveries."""
    from jobs_app.choices import DELIVERY_FAILED, DELIVERY_IN_FLIGHT, DeliveryStatus

    rows = (
        job_deliveries(job=job, user=user)
        .select_related(None)
        .order_by()
        .values("site_id", "site__site_id", "site__name", "status")
        .annotate(n=Count("id"))
    )
    sites: dict[int, dict] = {}
    for row in rows:
        site = sites.setdefault(
            row["site_id"],
            {
                "pk": row["site_id"],
                "site_id": row["site__site_id"],
                "name": row["site__name"],
                "total": 0,
                "completed": 0,
                "failed": 0,
                "in_progress": 0,
                "waiting": 0,
                "cancelled": 0,
            },
        )
        site["total"] += row["n"]
        status = row["status"]
        bucket = (
            "completed"
            if status == DeliveryStatus.COMPLETED
            else "failed"
            if status in DELIVERY_FAILED
            else "in_progress"
            if status in DELIVERY_IN_FLIGHT
            else "waiting"
            if status == DeliveryStatus.PENDING
            else "cancelled"
        )
        site[bucket] += row["n"]
    return sorted(sites.values(), key=lambda s: (-s["total"], s["site_id"]))[:SITE_BREAKDOWN_LIMIT]
