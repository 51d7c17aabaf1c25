"""Devices in `error` raise a device_error alert (decision in docs/monitoring.md): an
operator or an integration sets the status through the device API; the
device's own reports keep it; the tick's evaluation opens the alert after
ALERT_ERROR_SECONDS and closes it when the status is anything else."""

import datetime

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.choices import MembershipRole
from accounts.tests.factories import SiteMembershipFactory, UserFactory
from devices_app.choices import DeviceStatus
from devices_app.models import Device
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from homepot.tests.api_helpers import token_client
from monitoring_app.alerts import alerts_evaluate
from monitoring_app.choices import AlertKind, AuditEvent
from monitoring_app.models import Alert, AuditLog, DeviceStatusChange, Notification
from sites_app.tests.factories import SiteFactory

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"
HEALTH = "/api/v1/agent/health"


@pytest.fixture(autouse=True)
def thresholds(settings):
    settings.HOMEPOT_MONITORING_ALERT_ERROR_SECONDS = 60
    settings.HOMEPOT_MONITORING_ALERT_OFFLINE_SECONDS = 300
    settings.HOMEPOT_MONITORING_WEBHOOK_URL = ""


@pytest.fixture
def site():
    return SiteFactory()


@pytest.fixture
def manager_api(site):
    membership = SiteMembershipFactory(site=site, role=MembershipRole.MANAGER, user=UserFactory())
    return token_client(membership.user)


def later(seconds) -> datetime.datetime:
    return timezone.now() + datetime.timedelta(seconds=seconds)


def error_alerts():
    return Alert.objects.filter(kind=AlertKind.DEVICE_ERROR)


def test_a_device_set_to_error_through_the_api_raises_one_alert_after_the_threshold(site, manager_api):
    till = DeviceFactory(site=site, device_id="till-7", status=DeviceStatus.ONLINE, last_seen=timezone.now())

    response = manager_api.patch("/api/v1/devices/till-7", {"status": "error"}, format="json")
    assert response.status_code == 200, response.content

    [change] = DeviceStatusChange.objects.filter(device=till)
    assert (change.old_status, change.new_status, change.reason) == ("online", "error", "operator")
    alerts_evaluate()
    assert not error_alerts().exists()  # not yet: a status corrected at once pages nobody

    alerts_evaluate(now=later(61))
    alerts_evaluate(now=later(62))  # a repeat opens nothing

    [alert] = error_alerts()
    assert alert.device_id == till.pk and alert.resolved_at is None and "till-7" in alert.message
    assert list(alert.notifications.values_list("channel", flat=True)) == ["email"]
    assert AuditLog.objects.filter(event_type=AuditEvent.ALERT_OPENED, device=till).count() == 1

    manager_api.patch("/api/v1/devices/till-7", {"status": "online"}, format="json")
    alerts_evaluate(now=later(120))

    assert error_alerts().get().resolved_at is not None
    assert AuditLog.objects.filter(event_type=AuditEvent.ALERT_RESOLVED, device=till).count() == 1


def test_the_devices_own_heartbeats_and_reports_keep_it_in_error(site, manager_api):
    till = DeviceFactory(site=site, device_id="till-8", status=DeviceStatus.ONLINE, last_seen=timezone.now())
    manager_api.patch("/api/v1/devices/till-8", {"status": "error"}, format="json")
    _, secret = device_credential_issue(actor=None, device=till)
    agent = APIClient()
    agent.credentials(HTTP_AUTHORIZATION=f"Device {secret}")

    assert agent.post(HEARTBEAT, {}, format="json").json()["status"] == "error"
    assert agent.post(HEALTH, {"status": "healthy"}, format="json").status_code == 201
    alerts_evaluate(now=later(61))

    assert Device.objects.get(pk=till.pk).status == DeviceStatus.ERROR
    assert error_alerts().filter(resolved_at__isnull=True).count() == 1


def test_maintenance_started_on_the_device_page_closes_the_error_alert(client, site):
    # The admin shows the status read-only (docs/console.md): `error` comes through the device
    # API; the device page's "Start maintenance" button is the operator's way out of it.
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    till = DeviceFactory(site=site, status=DeviceStatus.ERROR, connectivity_changed_at=later(-3600))
    alerts_evaluate()
    assert error_alerts().get().resolved_at is None

    url = reverse("admin:devices_app_device_object_action", args=[till.pk, "maintenance-on"])
    response = client.post(url)
    assert response.status_code == 302, response.content

    alerts_evaluate()
    assert error_alerts().get().resolved_at is not None


def test_maintenance_closes_the_error_alert(site):
    till = DeviceFactory(site=site, status=DeviceStatus.ERROR, connectivity_changed_at=later(-3600))
    alerts_evaluate()
    Device.objects.filter(pk=till.pk).update(status=DeviceStatus.MAINTENANCE)
    alerts_evaluate()

    assert error_alerts().get().resolved_at is not None


def test_the_evaluation_is_set_based_whatever_the_number_of_devices_in_error(site):
    """Steady state (alerts open): the same statements for 3 or 30 devices in error; and
    opening 30 costs the 30 audit rows, not 30 device queries."""

    def make(n):
        for _ in range(n):
            DeviceFactory(site=site, status=DeviceStatus.ERROR, connectivity_changed_at=later(-3600))
        alerts_evaluate()
        with CaptureQueriesContext(connection) as queries:
            alerts_evaluate()
        return len(queries)

    few = make(3)
    many = make(27)

    assert error_alerts().filter(resolved_at__isnull=True).count() == 30
    assert Notification.objects.count() == 30
    assert many == few
