import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from devices_app.validators import normalize_mac
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "spelling",
    ["00:1B:44:11:3A:B9", "00:1b:44:11:3a:b9", "00-1B-44-11-3A-B9", "001b.4411.3ab9", "001B44113AB9"],
)
def test_mac_spellings_normalise_to_one_canonical_form(spelling):
    assert normalize_mac(spelling) == "00:1B:44:11:3A:B9"


@pytest.mark.parametrize(
    "bad", ["", "00:1B:44:11:3A", "00:1B:44:11:3A:B9:FF", "00:1B-44:11:3A:B9", "GG:1B:44:11:3A:B9"]
)
def test_malformed_macs_are_refused(bad):
    with pytest.raises(ValidationError):
        normalize_mac(bad)


def test_mac_is_stored_canonical_even_when_saved_directly():
    device = DeviceFactory(mac_address="00-1b-44-11-3a-b9")
    assert Device.objects.filter(mac_address="00:1B:44:11:3A:B9").get() == device


def test_database_refuses_an_unknown_status_or_type():
    device = DeviceFactory()
    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.filter(pk=device.pk).update(status="exploded")
    with pytest.raises(IntegrityError), transaction.atomic():
        Device.objects.filter(pk=device.pk).update(device_type="toaster")


def test_device_id_is_unique_across_the_fleet():
    DeviceFactory(device_id="pos-terminal-1", site=SiteFactory())
    with pytest.raises(IntegrityError):
        DeviceFactory(device_id="pos-terminal-1", site=SiteFactory())


def test_a_site_with_devices_cannot_be_deleted_by_accident():
    from django.db.models import ProtectedError

    device = DeviceFactory()
    with pytest.raises(ProtectedError):
        device.site.delete()


def test_devices_without_mac_do_not_collide():
    DeviceFactory(mac_address=None)
    DeviceFactory(mac_address=None)
    assert Device.objects.filter(mac_address__isnull=True).count() == 2


def test_no_device_index_is_one_another_index_already_starts_with():
    """Each index of the device table gets an entry for every row the sweep moves (a status
    change is not a HOT update): an index whose columns lead another one only costs writes."""
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, Device._meta.db_table)
    # The unique ones enforce something and stay (a plain index they lead is still redundant).
    indexes = {
        name: tuple(c["columns"]) for name, c in constraints.items() if c["index"] and not c["primary_key"]
    }
    covered = {
        name: other
        for name, columns in indexes.items()
        if not constraints[name]["unique"]
        for other, longer in indexes.items()
        if other != name and longer[: len(columns)] == columns
    }
    assert covered == {}
