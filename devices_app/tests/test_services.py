import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.tests.factories import SiteMembershipFactory
from devices_app.models import Device
from devices_app.services import device_create, device_delete, device_update
from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AuditLog
from monitoring_app.tests.factories import HealthCheckFactory
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def test_device_create_canonicalises_the_mac_and_audits(admin_user):
    site = SiteFactory()
    device = device_create(
        actor=admin_user,
        site=site,
        device_id="pos-terminal-009",
        name="POS Terminal 9",
        ip_address="192.168.3.9",
        mac_address="00-1b-44-11-3a-b9",
        config={"gateway_url": "https://payments.example.com"},
    )

    device.refresh_from_db()
    assert device.mac_address == "00:1B:44:11:3A:B9"
    log = AuditLog.objects.get()
    assert (log.event_type, log.device_ref, log.site_ref) == (
        "device.created",
        "pos-terminal-009",
        site.site_id,
    )
    assert log.new_values["mac_address"] == "00:1B:44:11:3A:B9"


@pytest.mark.parametrize(
    ("field", "value"),
    [("ip_address", "999.1.1.1"), ("mac_address", "00:1B:44:11:3A"), ("device_type", "toaster")],
)
def test_device_create_refuses_bad_values_and_stores_nothing(admin_user, field, value):
    with pytest.raises(ValidationError) as err:
        device_create(actor=admin_user, site=SiteFactory(), device_id="d-1", name="D", **{field: value})
    assert field in err.value.message_dict
    assert not Device.objects.exists()
    assert not AuditLog.objects.exists()


def test_duplicate_mac_is_refused(admin_user):
    DeviceFactory(mac_address="00:1B:44:11:3A:B9")
    with pytest.raises(ValidationError) as err:
        device_create(
            actor=admin_user, site=SiteFactory(), device_id="d-2", name="D", mac_address="001b44113ab9"
        )
    assert "Another device already has this MAC address." in str(err.value)


def test_a_manager_cannot_create_on_or_move_to_a_site_outside_their_scope():
    own, other = SiteFactory(), SiteFactory()
    manager = SiteMembershipFactory(site=own).user
    device = DeviceFactory(site=own)

    with pytest.raises(PermissionDenied):
        device_create(actor=manager, site=other, device_id="d-x", name="X")
    with pytest.raises(PermissionDenied):
        device_update(actor=manager, device=device, site=other)

    device.refresh_from_db()
    assert device.site == own
    assert not Device.objects.filter(device_id="d-x").exists()


def test_device_update_records_before_and_after(admin_user):
    device = DeviceFactory(firmware_version="4.2.1", status="online")
    device_update(actor=admin_user, device=device, firmware_version="4.3.0", status="online")

    log = AuditLog.objects.get()
    assert log.old_values == {"firmware_version": "4.2.1"}
    assert log.new_values == {"firmware_version": "4.3.0"}


def test_device_delete_removes_health_history_but_keeps_audit(admin_user):
    device = DeviceFactory(device_id="pos-terminal-042")
    HealthCheckFactory.create_batch(2, device=device)

    device_delete(actor=admin_user, device=device)

    assert not Device.objects.filter(device_id="pos-terminal-042").exists()
    log = AuditLog.objects.get()
    assert (log.event_type, log.device_ref) == ("device.deleted", "pos-terminal-042")
