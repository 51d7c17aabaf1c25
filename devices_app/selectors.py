"""Reads of the devices app. Every read is scoped with the one rule, `for_user`."""

from django.db.models import QuerySet

from devices_app.models import Device


def device_list(*, user) -> QuerySet[Device]:
    """The devices `user` may see, with their site (one query per page, however long)."""
    return Device.objects.for_user(user).select_related("site")


# The columns of a device export, in order; the import reads the same file back (it uses
# the columns it knows and ignores the read-only ones: status, health, times).
DEVICE_EXPORT_COLUMNS = {
    "device_id": "device_id",
    "name": "name",
    "device_type": "device_type",
    "site_id": "site__site_id",
    "ip_address": "ip_address",
    "mac_address": "mac_address",
    "firmware_version": "firmware_version",
    "push_channel": "push_channel",
    "status": "status",
    "health_status": "health_status",
    "last_seen": "last_seen",
    "created_at": "created_at",
}


def device_export_rows(queryset: QuerySet[Device]):
    """The rows of `queryset` (already scoped and filtered) for a CSV export, read lazily in
    keyset batches by id (the list's indexes end with id); nothing runs until iterated."""
    from homepot.csv_export import keyset_rows

    for row in keyset_rows(queryset, key="id", fields=list(DEVICE_EXPORT_COLUMNS.values())):
        yield [value.isoformat() if hasattr(value, "isoformat") else value for value in row]
