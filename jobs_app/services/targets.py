"""Which devices a job reaches: its sites, narrowed by a segment (device type, status,
firmware) and hand-picked devices; and the checks that the actor may target them."""

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from accounts.scoping import require_site_access, scoped_site_ids
from devices_app.choices import DeviceStatus, DeviceType
from devices_app.models import Device
from jobs_app.models import Job, SavedSegment
from sites_app.models import Site

# Segment keys and the values each accepts (None: any non-empty text).
SEGMENT_KEYS = {
    "device_type": set(DeviceType.values),
    "status": set(DeviceStatus.values),
    "firmware_version": None,
}


def clean_segment(segment) -> dict:
    """A segment is {key: [values]} with keys from SEGMENT_KEYS; refuse anything else (400)."""
    if segment in (None, ""):
        return {}
    if not isinstance(segment, dict):
        raise ValidationError({"segment": 'Give an object such as {"device_type": ["pos_terminal"]}.'})
    cleaned = {}
    for key, values in segment.items():
        if key not in SEGMENT_KEYS:
            raise ValidationError(
                {"segment": f"Unknown segment key {key!r}; use {', '.join(sorted(SEGMENT_KEYS))}."}
            )
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValidationError({"segment": f"{key}: give a non-empty list of text values."})
        allowed = SEGMENT_KEYS[key]
        unknown = [v for v in values if allowed is not None and v not in allowed]
        if unknown:
            raise ValidationError({"segment": f"{key}: unknown value(s) {', '.join(map(repr, unknown))}."})
        cleaned[key] = sorted(set(values))
    return cleaned


def target_devices_query(*, site_ids, segment: dict | None = None, device_ids=None) -> QuerySet[Device]:
    """The devices a job with these targets reaches: at one of `site_ids`, matching every
    list of the segment, and, when `device_ids` is given, among those devices."""
    devices = Device.objects.filter(site_id__in=list(site_ids))
    for key, values in (segment or {}).items():
        devices = devices.filter(**{f"{key}__in": values})
    if device_ids is not None:
        devices = devices.filter(pk__in=device_ids)
    return devices.order_by()


def job_target_query(job: Job) -> QuerySet[Device]:
    site_ids = [job.site_id, *job.extra_sites.values_list("pk", flat=True)]
    picked = job.target_devices.values_list("pk", flat=True)
    return target_devices_query(
        site_ids=site_ids, segment=job.segment, device_ids=picked if picked.exists() else None
    )


def check_targets(actor, site: Site, extra_sites, devices) -> list[int]:
    """Every targeted site must be one the actor may change; hand-picked devices must be at
    one of the targeted sites. Returns the site ids.

    An actor of every site (an admin) is not asked of the database: the only thing the
    query would add is that the site still exists, which the job's foreign key checks at
    COMMIT anyway (a site deleted meanwhile fails the write either way; the query only
    narrowed the window in which it can happen, by a statement's round trip)."""
    all_sites = actor is not None and scoped_site_ids(actor, "change") is None
    site_ids = [site.pk]
    if not all_sites:
        require_site_access(actor, site, "change")
    for extra in extra_sites:
        if not all_sites:
            require_site_access(actor, extra, "change")
        site_ids.append(extra.pk)
    strays = [device.device_id for device in devices if device.site_id not in site_ids]
    if strays:
        raise ValidationError(
            {"target_devices": f"Not at the job's sites: {', '.join(sorted(strays)[:10])}."}
        )
    return site_ids


def segment_for_job(actor, segment, saved_segment: SavedSegment | None) -> dict:
    """The segment a new job gets: the one given, or a copy of the saved segment's filter
    (one the actor may use; a later edit of the saved segment leaves the job alone)."""
    if saved_segment is None:
        return clean_segment(segment)
    if segment:
        raise ValidationError({"saved_segment": "Give either a segment or a saved segment, not both."})
    if actor is not None and not SavedSegment.objects.for_user(actor).filter(pk=saved_segment.pk).exists():
        raise ValidationError({"saved_segment": f"Unknown saved segment {saved_segment.pk}."})
    return clean_segment(saved_segment.segment)
