"""Reads of the sites app. Every read is scoped with the one rule, `for_user`."""

from django.db.models import Case, IntegerField, Q, QuerySet, Value, When

from sites_app.models import Site

# Internal ids are PostgreSQL bigints; a larger number can match nothing (and must not
# reach the database as an out-of-range parameter).
_MAX_ID = 2**63 - 1


def site_list(*, user) -> QuerySet[Site]:
    """The sites `user` may see, each with its `device_count`."""
    return Site.objects.for_user(user).with_device_count()


def _internal_id(reference) -> int | None:
    if isinstance(reference, bool):
        return None
    if isinstance(reference, int):
        value = reference
    elif isinstance(reference, str) and reference.isascii() and reference.isdigit():
        value = int(reference)
    else:
        return None
    return value if 0 < value <= _MAX_ID else None


def sites_by_reference(reference: int | str, queryset: QuerySet[Site] | None = None) -> QuerySet[Site]:
    """Sites named by `reference`: a JSON number is the internal id (as the guide's
    `"site_id": 3`); a string is the business id (`"site-003"`), or, when it is all digits
    and no site has that business id, the internal id. Best match first; at most one row
    is wanted, so callers slice `[:1]`."""
    queryset = Site.objects.all() if queryset is None else queryset
    internal_id = _internal_id(reference)
    if isinstance(reference, int):
        return queryset.filter(pk=internal_id) if internal_id else queryset.none()
    if not isinstance(reference, str) or "\x00" in reference:
        return queryset.none()
    if internal_id is None:
        return queryset.filter(site_id=reference)
    business_id_first = Case(
        When(site_id=reference, then=Value(0)), default=Value(1), output_field=IntegerField()
    )
    return queryset.filter(Q(site_id=reference) | Q(pk=internal_id)).order_by(business_id_first)


def site_for_reference(*, user, reference: int | str, action: str = "change") -> Site | None:
    """The site `reference` names among those `user` may `action`, or None.

    Unknown and out-of-scope sites look the same to the caller, so a reference never
    reveals that another operator's site exists.
    """
    return sites_by_reference(reference, Site.objects.for_user(user, action)).first()
