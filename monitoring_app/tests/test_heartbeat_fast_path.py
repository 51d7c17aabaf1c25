"""The heartbeat's plain-Django fast path answers exactly as the DRF view would, and hands
everything it does not recognise to the DRF view (which gives the API's errors)."""

import datetime
import json

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIRequestFactory

from devices_app.choices import DeviceStatus
from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory
from monitoring_app.api.agent import HeartbeatView
from monitoring_app.models import DeviceStatusChange

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"


@pytest.fixture
def device():
    return DeviceFactory(status=DeviceStatus.OFFLINE, last_seen=None)


@pytest.fixture
def secret(device):
    return device_credential_issue(actor=None, device=device)[1]


def post(secret, body=None, content_type="application/json", **extra):
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return Client().post(
        HEARTBEAT, data=data, content_type=content_type, HTTP_AUTHORIZATION=f"Device {secret}", **extra
    )


def through_drf(secret, body=None):
    """The same request answered by the DRF view alone, bypassing the fast path."""
    data = "" if body is None else json.dumps(body)
    request = APIRequestFactory().post(
        HEARTBEAT, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Device {secret}"
    )
    response = HeartbeatView.as_view()(request)
    response.render()
    return response


def fast_path_calls(monkeypatch):
    """Count the requests the DRF view had to answer."""
    calls = []
    original = HeartbeatView.post

    def counted(self, request):
        calls.append(request)
        return original(self, request)

    monkeypatch.setattr(HeartbeatView, "post", counted)
    return calls


def test_a_plain_heartbeat_skips_drf_and_answers_what_drf_would(secret, device, monkeypatch):
    drf_calls = fast_path_calls(monkeypatch)
    fast = post(secret)
    assert drf_calls == []
    slow = through_drf(secret)

    assert fast.status_code == slow.status_code == 200
    assert fast["Content-Type"] == "application/json"
    fast_body, slow_body = fast.json(), json.loads(slow.content)
    assert set(fast_body) == set(slow_body) == {"device_id", "status", "server_time", "next_report_in"}
    assert {k: v for k, v in fast_body.items() if k != "server_time"} == {
        "device_id": device.device_id,
        "status": "online",
        "next_report_in": 60,
    }
    assert fast_body["server_time"].endswith("Z")
    # The first heartbeat brought the device online, as the service records it.
    device.refresh_from_db()
    assert device.status == DeviceStatus.ONLINE and device.last_seen is not None
    assert DeviceStatusChange.objects.filter(device=device, new_status="online").count() == 1


def test_a_heartbeat_with_the_device_clock_keeps_it(secret, device, monkeypatch):
    drf_calls = fast_path_calls(monkeypatch)
    stamp = timezone.now() - datetime.timedelta(seconds=5)

    assert post(secret, {"timestamp": stamp.isoformat()}).status_code == 200
    assert post(secret, {}).status_code == 200
    assert drf_calls == []
    device.refresh_from_db()
    assert device.reported_at == stamp


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        ({"timestamp": "2999-01-01T00:00:00Z"}, "application/json", 400, "timestamp"),
        ({"timestamp": "yesterday"}, "application/json", 400, "timestamp"),
        ({"timestap": "2026-01-01T00:00:00Z"}, "application/json", 400, "timestap"),
        (b"{not json", "application/json", 400, None),
        (b"[1, 2]", "application/json", 400, None),
        (b"timestamp=1", "application/x-www-form-urlencoded", 415, None),
    ],
)
def test_anything_but_a_valid_heartbeat_gets_the_apis_error(
    secret, device, body, content_type, status, field
):
    response = post(secret, body, content_type=content_type)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["status"] == status
    if field:
        assert field in error["fields"]
    device.refresh_from_db()
    assert device.last_seen is None  # nothing stored


def test_a_large_body_goes_to_the_drf_view(secret, monkeypatch):
    drf_calls = fast_path_calls(monkeypatch)
    response = post(secret, {"timestamp": timezone.now().isoformat(), "pad": "x" * 2000})

    assert response.status_code == 400 and "pad" in response.json()["error"]["fields"]
    assert len(drf_calls) == 1


@pytest.mark.parametrize("header", ["Device hpd_wrong", "Device", "Device a b", "Token abc", None])
def test_bad_credentials_get_the_apis_401_with_its_challenge(header, device):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().post(HEARTBEAT, data=b"", content_type="application/json", **extra)

    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401
    assert response["WWW-Authenticate"] == 'Device realm="agent"'


def test_other_methods_get_405(secret):
    response = Client().get(HEARTBEAT, HTTP_AUTHORIZATION=f"Device {secret}")
    assert response.status_code == 405


def test_the_schema_still_documents_the_heartbeat(admin_client):
    schema = admin_client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    operation = schema.json()["paths"]["/api/v1/agent/heartbeat/"]["post"]
    assert operation["summary"] == "I am alive"
