import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.tests.factories import DeviceFactory
from homepot.errors import Conflict
from monitoring_app.models import AuditLog
from sites_app.models import Site
from sites_app.services import site_create, site_delete, site_update
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db


def test_site_create_stores_the_site_and_one_audit_row(admin_user):
    site = site_create(actor=admin_user, site_id="site-003", name="North Branch", location="789 North Ave")

    assert Site.objects.get(site_id="site-003").name == "North Branch"
    log = AuditLog.objects.get()
    assert (log.event_type, log.actor, log.site_id, log.site_ref) == (
        "site.created",
        admin_user,
        site.pk,
        "site-003",
    )
    assert log.new_values["location"] == "789 North Ave"


def test_site_create_refuses_duplicate_site_id_and_stores_nothing(admin_user):
    SiteFactory(site_id="site-003")
    with pytest.raises(ValidationError) as err:
        site_create(actor=admin_user, site_id="site-003", name="Again")
    assert err.value.error_dict["site_id"][0].code == "unique"
    assert not AuditLog.objects.exists()


def test_only_admins_create_sites():
    manager = UserFactory()
    with pytest.raises(PermissionDenied):
        site_create(actor=manager, site_id="site-009", name="Sneaky")
    assert not Site.objects.filter(site_id="site-009").exists()


def test_site_update_audits_only_changed_fields_and_a_repeat_records_nothing(admin_user):
    site = SiteFactory(name="Old", location="1 High St")

    site_update(actor=admin_user, site=site, name="New", location="1 High St")
    site_update(actor=admin_user, site=site, name="New")

    log = AuditLog.objects.get()
    assert log.event_type == "site.updated"
    assert log.old_values == {"name": "Old"}
    assert log.new_values == {"name": "New"}


@pytest.mark.parametrize("role", [MembershipRole.VIEWER, MembershipRole.MANAGER])
def test_only_admins_change_the_site_record(role, admin_user):
    site = SiteFactory(name="Harbour Street")
    member = SiteMembershipFactory(site=site, role=role).user

    with pytest.raises(PermissionDenied):
        site_update(actor=member, site=site, name="Renamed by a member")
    site_update(actor=admin_user, site=site, name="Renamed by head office")

    site.refresh_from_db()
    assert site.name == "Renamed by head office"


def test_site_delete_refuses_a_site_with_devices(admin_user):
    site = SiteFactory()
    DeviceFactory(site=site)
    with pytest.raises(Conflict):
        site_delete(actor=admin_user, site=site)
    assert Site.objects.filter(pk=site.pk).exists()
    assert not AuditLog.objects.exists()


def test_site_delete_keeps_the_audit_history(admin_user):
    site = site_create(actor=admin_user, site_id="site-777", name="Closing down")
    site_pk = site.pk

    site_delete(actor=admin_user, site=site)

    assert not Site.objects.filter(pk=site_pk).exists()
    history = list(
        AuditLog.objects.filter(site_ref="site-777").order_by("id").values_list("event_type", "site_id")
    )
    assert history == [("site.created", site_pk), ("site.deleted", site_pk)]
