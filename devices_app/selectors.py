"""Reads of the devices app. Every read is scoped with the one rule, `for_user`."""

from django.db.models import QuerySet

from devices_app.models import Device


def device_list(*, user) -> QuerySet[Device]:
    """The devices `user` may see, with their site (one query per page, however long)."""
    return Device.objects.for_user(user).select_related("site")
