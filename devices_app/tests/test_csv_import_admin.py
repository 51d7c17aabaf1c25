"""The device list's Import CSV page: upload, preview table, confirm; scope and permissions."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.models import Device
from devices_app.tests.factories import DeviceFactory
from monitoring_app.models import AuditLog
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

URL = "/admin/devices_app/device/import/"
# Sessions waiting for a lock this session holds.
WAITING_ON_ME = "SELECT count(*) FROM pg_stat_activity WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid))"


def upload(text: str):
    return {"file": SimpleUploadedFile("devices.csv", text.encode(), content_type="text/csv")}


@pytest.fixture
def north(db):
    return SiteFactory(site_id="site-north")


def test_the_url_and_the_changelist_link(admin_browser, north):
    assert reverse("admin:devices_app_device_import") == URL
    page = admin_browser.get(reverse("admin:devices_app_device_changelist")).content.decode()
    assert URL in page and "Import CSV" in page
    assert "Upload" in admin_browser.get(URL).content.decode()


def test_upload_previews_then_confirm_applies_once(admin_browser, north):
    DeviceFactory(site=north, device_id="till-1", name="Till 1")
    text = "device_id,name,site_id\ntill-1,Till One,site-north\ntill-2,Till 2,site-north\n"

    preview = admin_browser.post(URL, upload(text))
    assert preview.status_code == 200
    shown = preview.context["preview"]
    assert (shown["create"], shown["update"], shown["skip"]) == (1, 1, 0)
    assert "Import 1 new and 1 changed devices" in preview.content.decode()
    assert Device.objects.count() == 1  # nothing written by the preview

    done = admin_browser.post(URL, {"token": preview.context["token"]})
    assert done.status_code == 302 and done["Location"] == reverse("admin:devices_app_device_changelist")
    assert set(Device.objects.values_list("device_id", "name")) == {
        ("till-1", "Till One"),
        ("till-2", "Till 2"),
    }
    assert AuditLog.objects.filter(event_type="devices.imported").count() == 1

    # The token is spent: a second confirmation applies nothing.
    again = admin_browser.post(URL, {"token": preview.context["token"]})
    assert "expired" in again.content.decode()
    assert AuditLog.objects.filter(event_type="devices.imported").count() == 1


def test_row_errors_are_listed_with_field_and_reason_and_no_confirm_is_offered(admin_browser, north):
    text = "device_id,name,site_id,mac_address\ntill-1,Till 1,site-north,zz\ntill-2,Till 2,site-gone,\n"
    page = admin_browser.post(URL, upload(text))

    errors = page.context["preview"]["errors"]
    assert [(e["row"], e["field"]) for e in errors] == [(2, "mac_address"), (3, "site_id")]
    assert "token" not in page.context
    assert "Enter a valid MAC address" in page.content.decode()
    assert not Device.objects.exists()


def test_an_unreadable_file_is_named(admin_browser):
    page = admin_browser.post(URL, upload("name\nx\n"))
    assert "Missing column(s): device_id, site_id" in page.context["problem"]


def test_a_manager_imports_only_into_their_sites(client, north):
    south = SiteFactory(site_id="site-south")
    manager = UserFactory(is_staff=True)
    SiteMembershipFactory(user=manager, site=north, role=MembershipRole.MANAGER)
    client.force_login(manager)

    page = client.post(URL, upload("device_id,name,site_id\ntill-9,Till 9,site-south\n"))
    assert [(e["row"], e["field"]) for e in page.context["preview"]["errors"]] == [(2, "site_id")]
    assert "site-south" not in str(Device.objects.values_list("site__site_id", flat=True))
    assert south.devices.count() == 0


def test_a_viewer_gets_403(client, north):
    viewer = UserFactory(is_staff=True)
    SiteMembershipFactory(user=viewer, site=north, role=MembershipRole.VIEWER)
    client.force_login(viewer)
    assert client.get(URL).status_code == 403
    assert client.post(URL, upload("device_id,name,site_id\n")).status_code == 403
    assert "Import CSV" not in client.get(reverse("admin:devices_app_device_changelist")).content.decode()


@pytest.mark.django_db(transaction=True)
def test_a_mac_address_registered_during_the_apply_is_a_named_conflict_not_a_500(admin_browser):
    """Another writer registers the file's MAC address between the apply's own check and its
    write (its row is not committed yet when the import looks): the import waits for it on the
    unique index, then finds the address taken. The page says so; nothing is imported."""
    import threading
    import time

    from django.db import close_old_connections, connection, transaction

    SiteFactory(site_id="site-north")
    text = "device_id,name,site_id,mac_address\ntill-1,Till 1,site-north,00:1B:44:11:3A:B7\n"
    preview = admin_browser.post(URL, upload(text))
    token = preview.context["token"]
    registered, failure = threading.Event(), []

    def other_writer():
        try:
            with transaction.atomic():
                DeviceFactory(device_id="someone-else", mac_address="00:1B:44:11:3A:B7")
                registered.set()
                # Commit only once the import waits on our uncommitted row.
                deadline = time.monotonic() + 20
                with connection.cursor() as cursor:
                    while time.monotonic() < deadline:
                        cursor.execute(WAITING_ON_ME)
                        if cursor.fetchone()[0]:
                            break
                    else:
                        failure.append("the import never waited for the other writer")
        except Exception as exc:  # reported to the test's thread
            failure.append(repr(exc))
            registered.set()
        finally:
            close_old_connections()
            connection.close()

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert registered.wait(10)
    page = admin_browser.post(URL, {"token": token})
    writer.join(20)

    assert failure == []
    assert page.status_code == 200
    assert "registered by someone else" in page.context["problem"]
    assert list(Device.objects.values_list("device_id", flat=True)) == ["someone-else"]
    assert not AuditLog.objects.filter(event_type="devices.imported").exists()
