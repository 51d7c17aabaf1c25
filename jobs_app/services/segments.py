"""Saved segments: named device filters, site-scoped or for everyone who runs a site. A
job made from one copies its filter (jobs_app.services.targets.segment_for_job)."""

from django.core.exceptions import PermissionDenied, ValidationError

from accounts.scoping import require_site_access, scoped_site_ids
from jobs_app.models import SavedSegment
from jobs_app.services.targets import clean_segment
from monitoring_app.choices import AuditEvent
from monitoring_app.services import audit_record, audited_atomic, changes, lock_for_change, snapshot
from sites_app.models import Site


def _check_segment_scope(actor, site: Site | None) -> None:
    """A site-scoped segment needs change rights on its site; a site-less one, change
    rights on some site (the people who create jobs)."""
    if site is not None:
        require_site_access(actor, site, "change")
        return
    managed = scoped_site_ids(actor, "change") if actor is not None else None
    if managed is not None and not managed.exists():
        raise PermissionDenied("Only those who run a site may save segments.")


def _clean_saved_segment(saved: SavedSegment) -> None:
    saved.name = (saved.name or "").strip()
    saved.segment = clean_segment(saved.segment)
    if not saved.segment:
        raise ValidationError({"segment": "A saved segment needs at least one list to match."})
    saved.full_clean()


SEGMENT_AUDITED_FIELDS = ("name", "segment", "site")


@audited_atomic()
def segment_create(*, actor, name: str, segment: dict, site: Site | None = None) -> SavedSegment:
    """Save a named filter, for `site`'s managers or (site-less) for everyone who runs a
    site. Audited as segment.created; a job made from it also records the segment's id and
    name in its job.created row."""
    _check_segment_scope(actor, site)
    saved = SavedSegment(name=name, segment=segment, site=site, owner=actor)
    _clean_saved_segment(saved)
    saved.save()
    audit_record(
        event_type=AuditEvent.SEGMENT_CREATED,
        actor=actor,
        site=site,
        description=f"Saved segment #{saved.pk} '{saved.name}' created",
        new_values=snapshot(saved, SEGMENT_AUDITED_FIELDS),
    )
    return saved


def _segment_for_change(actor, saved: SavedSegment) -> SavedSegment:
    saved = lock_for_change(SavedSegment, saved.pk)
    if actor is not None and not SavedSegment.objects.for_user(actor, "change").filter(pk=saved.pk).exists():
        raise PermissionDenied("You may not change this saved segment.")
    return saved


def _still_in_reach(actor, saved: SavedSegment) -> None:
    # Checked after the write (the save rolls back with the error): a change may not move a
    # segment out of its changer's reach, e.g. make another's site segment site-less (those
    # are changed only by their owner), which would hand it to someone else.
    if actor is not None and not SavedSegment.objects.for_user(actor, "change").filter(pk=saved.pk).exists():
        raise PermissionDenied("This change would move the saved segment out of your reach.")


@audited_atomic()
def segment_update(*, actor, saved: SavedSegment, **fields) -> SavedSegment:
    """Rename, re-filter or re-scope a saved segment. Jobs already made from it keep the
    filter they copied. Audited as segment.updated with only what changed."""
    saved = _segment_for_change(actor, saved)
    unknown = set(fields) - {"name", "segment", "site"}
    if unknown:
        raise ValidationError({sorted(unknown)[0]: "This cannot be changed."})
    if "site" in fields and fields["site"] != saved.site:
        _check_segment_scope(actor, fields["site"])
    before = snapshot(saved, SEGMENT_AUDITED_FIELDS)
    for name, value in fields.items():
        setattr(saved, name, value)
    _clean_saved_segment(saved)
    old, new = changes(before, snapshot(saved, SEGMENT_AUDITED_FIELDS))
    if new:
        saved.save()
        _still_in_reach(actor, saved)
        audit_record(
            event_type=AuditEvent.SEGMENT_UPDATED,
            actor=actor,
            site=saved.site,
            description=f"Saved segment #{saved.pk} updated: {', '.join(new)}",
            old_values=old,
            new_values=new,
        )
    return saved


@audited_atomic()
def segment_delete(*, actor, saved: SavedSegment) -> None:
    """Delete a saved segment; jobs made from it keep their copied filter. Audited as
    segment.deleted."""
    saved = _segment_for_change(actor, saved)
    audit_record(
        event_type=AuditEvent.SEGMENT_DELETED,
        actor=actor,
        site=saved.site,
        description=f"Saved segment #{saved.pk} '{saved.name}' deleted",
        old_values=snapshot(saved, SEGMENT_AUDITED_FIELDS),
    )
    saved.delete()
