"""The console's search reads the DeviceSearch side table, which PostgreSQL's triggers keep
in step with the devices through every door that writes them: the admin, the CSV import, a
set-based update, create_fleet, deletion. Each test searches through the admin client (what
an operator sees) and checks the side table holds exactly the devices' searched columns."""

import datetime
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from devices_app.choices import DeviceStatus
from devices_app.models import Device, DeviceSearch
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.models import DeviceStatusChange, MonitoringState
from monitoring_app.sweep import sweep_offline
from sites_app.tests.factories import SiteFactory

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="the side table's triggers: PostgreSQL"),
]

CHANGELIST = reverse("admin:devices_app_device_changelist")
SEARCHED = ("device_id", "site_id", "name", "ip_address", "mac_address")


def found(client, term: str) -> list[str]:
    response = client.get(CHANGELIST, {"q": term})
    assert response.status_code == 200
    return sorted(device.device_id for device in response.context["cl"].result_list)


def assert_side_table_matches_devices():
    """The side table holds one row per device with that device's searched columns, no more."""
    devices = {row[0]: row[1:] for row in Device.objects.values_list("pk", *SEARCHED).order_by("pk")}
    side = {
        row[0]: row[1:]
        for row in DeviceSearch.objects.values_list(
            "device_id", "device_key", "site_id", "name", "ip_address", "mac_address"
        ).order_by("pk")
    }
    assert side == devices


def test_a_device_added_in_the_admin_is_found_by_id_name_ip_and_mac(admin_browser):
    site = SiteFactory(site_id="site-dock")
    response = admin_browser.post(
        reverse("admin:devices_app_device_add"),
        {
            "device_id": "kiosk-41",
            "name": "Drive-thru kiosk",
            "device_type": "pos_terminal",
            "site": site.pk,
            "ip_address": "172.16.4.41",
            "mac_address": "02-aa-00-00-00-41",
            "firmware_version": "1.0",
            "config": "{}",
            "_save": "Save",
        },
    )
    assert response.status_code == 302

    for term in ("kiosk-41", "drive-thru", "172.16.4", "02:AA:00:00:00:41", "site-dock"):
        assert found(admin_browser, term) == ["kiosk-41"], term
    assert_side_table_matches_devices()


def test_a_rename_in_the_admin_is_found_by_the_new_name_only(admin_browser):
    device = DeviceFactory(device_id="till-1", name="Front till", ip_address="10.1.1.1")
    data = {
        "device_id": "till-1b",
        "name": "Back office till",
        "device_type": device.device_type,
        "site": device.site.pk,
        "ip_address": "10.2.2.2",
        "mac_address": "",
        "firmware_version": device.firmware_version,
        "config": "{}",
        "_save": "Save",
    }

    response = admin_browser.post(reverse("admin:devices_app_device_change", args=[device.pk]), data)

    assert response.status_code == 302
    assert found(admin_browser, "back office") == ["till-1b"]
    assert found(admin_browser, "till-1b") == ["till-1b"]
    assert found(admin_browser, "10.2.2") == ["till-1b"]
    assert found(admin_browser, "front") == []
    assert found(admin_browser, "10.1.1") == []
    assert_side_table_matches_devices()


def test_devices_imported_or_changed_by_the_csv_import_are_found(admin_browser, admin_user):
    north = SiteFactory(site_id="site-north")
    SiteFactory(site_id="site-south")
    DeviceFactory(device_id="till-1", name="Till one", site=north, ip_address="10.9.0.1")
    csv = (
        "device_id,name,site_id,device_type,ip_address,mac_address,firmware_version\n"
        "till-1,Renamed till,site-south,pos_terminal,10.9.5.1,,4.2.1\n"  # moved, renamed
        "till-2,Fresh till,site-north,card_reader,10.9.0.2,02-bb-00-00-00-02,2.8.3\n"  # new
    )

    response = token_client(admin_user).generic(
        "POST", "/api/v1/devices/import?dry_run=false", csv.encode(), content_type="text/csv"
    )

    assert response.status_code == 200, response.content
    assert found(admin_browser, "renamed") == ["till-1"]
    assert found(admin_browser, "site-south") == ["till-1"]
    assert found(admin_browser, "10.9.5") == ["till-1"]
    assert found(admin_browser, "fresh") == ["till-2"]
    assert found(admin_browser, "02:BB:00:00:00:02") == ["till-2"]
    assert found(admin_browser, "till one") == []
    assert_side_table_matches_devices()


def test_a_set_based_update_of_many_devices_is_followed(admin_browser):
    site = SiteFactory()
    DeviceFactory.create_batch(30, site=site)

    Device.objects.filter(site=site).update(ip_address="192.168.200.7")

    assert len(found(admin_browser, "192.168.200")) == 30
    assert_side_table_matches_devices()


def test_a_fleet_from_create_fleet_is_searchable(admin_browser):
    call_command("create_fleet", sites=3, devices_per_site=4, site_prefix="bulk", stdout=StringIO())

    assert DeviceSearch.objects.count() == Device.objects.count() == 12
    one = Device.objects.order_by("pk").first()
    assert found(admin_browser, one.device_id) == [one.device_id]
    assert found(admin_browser, one.mac_address) == [one.device_id]
    assert_side_table_matches_devices()


def test_deleted_devices_leave_the_search(admin_browser):
    alone, *pair = DeviceFactory.create_batch(3, name="Doomed till")

    admin_browser.post(reverse("admin:devices_app_device_delete", args=[alone.pk]), {"post": "yes"})
    admin_browser.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": [d.pk for d in pair], "post": "yes"}
    )

    assert found(admin_browser, "doomed") == []
    assert not DeviceSearch.objects.exists()


def test_a_site_manager_searching_by_address_sees_only_their_sites(client):
    from accounts.choices import MembershipRole
    from accounts.tests.factories import SiteMembershipFactory, UserFactory, grant_perms

    mine, theirs = SiteFactory(), SiteFactory()
    DeviceFactory(device_id="till-mine", site=mine, ip_address="10.40.0.1", mac_address="02:CC:00:00:00:01")
    DeviceFactory(
        device_id="till-theirs", site=theirs, ip_address="10.40.0.2", mac_address="02:CC:00:00:00:02"
    )
    user = UserFactory(is_staff=True)
    grant_perms(user, "devices_app.view_device")
    SiteMembershipFactory(user=user, site=mine, role=MembershipRole.MANAGER)
    client.force_login(user)

    assert found(client, "10.40.0") == ["till-mine"]
    assert found(client, "till") == ["till-mine"]
    assert found(client, "02:CC:00:00:00:02") == []
    assert found(client, theirs.site_id) == []


def test_the_sweep_marks_devices_offline_without_rewriting_their_search_rows():
    now = timezone.now()
    an_hour_ago = now - datetime.timedelta(hours=1)
    silent = DeviceFactory.create_batch(3, status=DeviceStatus.ONLINE, last_seen=an_hour_ago)
    DeviceFactory(status=DeviceStatus.ONLINE, last_seen=now)
    # Monitoring has been running: the previous sweep a moment ago, long after a resume.
    MonitoringState.objects.create(
        pk=1, last_sweep_at=now - datetime.timedelta(seconds=30), resumed_at=now - datetime.timedelta(days=1)
    )

    def row_versions():
        with connection.cursor() as cursor:
            cursor.execute("SELECT device_id, xmin::text FROM devices_app_devicesearch ORDER BY device_id")
            return cursor.fetchall()

    before = row_versions()
    result = sweep_offline(now=now)

    assert result.marked_offline == 3
    assert DeviceStatusChange.objects.filter(device__in=silent, new_status=DeviceStatus.OFFLINE).count() == 3
    # The sweep's UPDATE names neither searched column: the trigger never fired, the rows
    # (and so the GIN indexes) were not written.
    assert row_versions() == before
