"""The heartbeat's fast path (in front of Django, homepot.wsgi) answers exactly as the DRF view
would, and hands everything it does not recognise to Django (which gives the API's errors).

Requests go through `homepot.wsgi.application`, the object gunicorn serves, in this process
(so they share the test's transaction); Django's test client would bypass the fast path."""

import datetime
import json
import uuid

import pytest
from django.utils import timezone
from rest_framework.test import APIRequestFactory

from devices_app import credential_cache
from devices_app.choices import DeviceStatus
from devices_app.services import device_credential_issue, device_credential_revoke
from devices_app.tests.factories import DeviceFactory
from homepot.tests.test_metrics import HEARTBEAT_ROUTE, delta, scrape, token  # noqa: F401 (fixture)
from homepot.tests.wsgi_call import wsgi_call
from homepot.wsgi import application
from monitoring_app.api.agent import HeartbeatView
from monitoring_app.models import DeviceStatusChange

pytestmark = pytest.mark.django_db

HEARTBEAT = "/api/v1/agent/heartbeat"


class Answer:
    def __init__(self, status: str, headers: list, body: bytes):
        self.status_code = int(status.split()[0])
        self.headers = {name.lower(): value for name, value in headers}
        self.content = body

    def json(self):
        return json.loads(self.content)


def wsgi_post(path=HEARTBEAT, body=b"", *, content_type="application/json", method="POST", **headers):
    """One request to the WSGI application as gunicorn would make it
    (homepot.tests.wsgi_call)."""
    headers = {"CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)), **headers}
    return Answer(*wsgi_call(application, method, path, body, **headers))


@pytest.fixture(autouse=True)
def _fresh_cache():
    # Each test's rows are rolled back; this process's memory of credentials must go too.
    credential_cache.clear()
    yield
    credential_cache.clear()


@pytest.fixture
def device():
    return DeviceFactory(status=DeviceStatus.OFFLINE, last_seen=None)


@pytest.fixture
def secret(device):
    return device_credential_issue(actor=None, device=device)[1]


def post(secret, body=None, content_type="application/json", **extra):
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    return wsgi_post(body=data, content_type=content_type, HTTP_AUTHORIZATION=f"Device {secret}", **extra)


def through_drf(secret, body=None):
    """The same request answered by the DRF view alone, bypassing the fast path."""
    data = "" if body is None else json.dumps(body)
    request = APIRequestFactory().post(
        HEARTBEAT, data=data, content_type="application/json", HTTP_AUTHORIZATION=f"Device {secret}"
    )
    response = HeartbeatView.as_view()(request)
    response.render()
    return response


def drf_calls(monkeypatch):
    """Count the requests the DRF view had to answer."""
    calls = []
    original = HeartbeatView.post

    def counted(self, request):
        calls.append(request)
        return original(self, request)

    monkeypatch.setattr(HeartbeatView, "post", counted)
    return calls


def test_a_plain_heartbeat_skips_django_and_answers_what_drf_would(secret, device, monkeypatch):
    calls = drf_calls(monkeypatch)
    fast = post(secret)
    assert calls == []
    slow = through_drf(secret)

    assert fast.status_code == slow.status_code == 200
    assert fast.headers["content-type"] == "application/json"
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


def test_the_answer_carries_the_headers_of_djangos_middleware(secret):
    answer = post(secret, HTTP_X_REQUEST_ID="terminal-42-req-7")

    assert answer.status_code == 200
    assert answer.headers["x-request-id"] == "terminal-42-req-7"
    assert answer.headers["x-frame-options"] == "DENY"
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "same-origin"
    assert answer.headers["content-length"] == str(len(answer.content))
    # One made up when none is sent: a random UUID's 32 hex digits, as Django's side makes them.
    made_up = {post(secret).headers["x-request-id"] for _ in range(3)}
    assert len(made_up) == 3
    assert all(len(rid) == 32 and uuid.UUID(hex=rid).version == 4 for rid in made_up)
    assert all(uuid.UUID(hex=rid).variant == uuid.RFC_4122 for rid in made_up)


def test_a_steady_heartbeat_answers_the_views_bytes_and_follows_a_changed_setting(
    secret, device, settings, monkeypatch
):
    post(secret)  # first contact: online, the identity stored in Redis
    settings.HOMEPOT_MONITORING_EXPECTED_INTERVAL_SECONDS = 90
    calls = drf_calls(monkeypatch)

    fast = post(secret)
    assert calls == []
    slow = through_drf(secret)

    assert fast.status_code == slow.status_code == 200
    fast_body, slow_body = fast.json(), json.loads(slow.content)
    assert fast_body["next_report_in"] == slow_body["next_report_in"] == 90
    # Byte for byte the view's rendering, but for the moment each was made.
    assert fast.content.replace(fast_body["server_time"].encode(), b"T") == slow.content.replace(
        slow_body["server_time"].encode(), b"T"
    )
    assert abs(datetime.datetime.fromisoformat(fast_body["server_time"]) - timezone.now()).total_seconds() < 5


def test_over_https_behind_the_proxy_it_adds_hsts_as_django_would(secret, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    answer = post(secret, HTTP_X_FORWARDED_PROTO="https")

    assert answer.status_code == 200
    assert answer.headers["strict-transport-security"] == "max-age=3600"


def test_a_plain_http_heartbeat_is_left_to_django_when_https_is_required(secret, settings, monkeypatch):
    # Django's SecurityMiddleware redirects it (its settings are read when the application
    # loads, so here, with the setting changed afterwards, the view answers instead).
    settings.SECURE_SSL_REDIRECT = True
    calls = drf_calls(monkeypatch)
    post(secret)

    assert len(calls) == 1


def test_a_host_django_refuses_is_refused_here_too(secret, device):
    answer = post(secret, HTTP_HOST="evil.example")

    assert answer.status_code == 400
    device.refresh_from_db()
    assert device.last_seen is None


def test_a_heartbeat_with_the_device_clock_keeps_it(secret, device, monkeypatch):
    calls = drf_calls(monkeypatch)
    stamp = timezone.now() - datetime.timedelta(seconds=5)

    assert post(secret, {"timestamp": stamp.isoformat()}).status_code == 200
    assert post(secret, {}).status_code == 200
    assert calls == []
    device.refresh_from_db()
    assert device.reported_at == stamp


def test_accepted_heartbeats_are_counted_under_the_views_route(secret, token):  # noqa: F811
    before = scrape()
    assert post(secret).status_code == 200
    assert post(secret).status_code == 200
    assert post("hpd_wrong").status_code == 401
    after = scrape()

    assert delta(before, after, "homepot_ingest_accepted_total", kind="heartbeat") == 2
    assert (
        delta(
            before, after, "homepot_http_requests_total", route=HEARTBEAT_ROUTE, method="POST", status="200"
        )
        == 2
    )
    assert (
        delta(
            before, after, "homepot_http_requests_total", route=HEARTBEAT_ROUTE, method="POST", status="401"
        )
        == 1
    )
    assert (
        delta(before, after, "homepot_ingest_refused_total", kind="heartbeat", reason="unauthenticated") == 1
    )
    assert (
        delta(
            before, after, "homepot_http_request_duration_seconds_count", route=HEARTBEAT_ROUTE, method="POST"
        )
        == 3
    )


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        ({"timestamp": "2999-01-01T00:00:00Z"}, "application/json", 400, "timestamp"),
        ({"timestamp": "yesterday"}, "application/json", 400, "timestamp"),
        ({"timestap": "2026-01-01T00:00:00Z"}, "application/json", 400, "timestap"),
        (b"{not json", "application/json", 400, None),
        (b"[1, 2]", "application/json", 400, None),
        (b"null", "application/json", 400, None),
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
    calls = drf_calls(monkeypatch)
    response = post(secret, {"timestamp": timezone.now().isoformat(), "pad": "x" * 2000})

    assert response.status_code == 400 and "pad" in response.json()["error"]["fields"]
    assert len(calls) == 1


@pytest.mark.parametrize("header", ["Device hpd_wrong", "Device", "Device a b", "Token abc", None])
def test_bad_credentials_get_the_apis_401_with_its_challenge(header, device):
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = wsgi_post(**extra)

    assert response.status_code == 401
    assert response.json()["error"]["status"] == 401
    assert response.headers["www-authenticate"] == 'Device realm="agent"'


def test_a_credential_revoked_in_this_process_is_refused_at_once(
    secret, device, admin_user, django_capture_on_commit_callbacks
):
    assert post(secret).status_code == 200  # now remembered by this process
    with django_capture_on_commit_callbacks(execute=True):
        device_credential_revoke(actor=admin_user, device=device)

    assert post(secret).status_code == 401


def test_other_methods_get_405(secret):
    response = wsgi_post(method="GET", body=b"", HTTP_AUTHORIZATION=f"Device {secret}")
    assert response.status_code == 405


def test_the_schema_still_documents_the_heartbeat(admin_client):
    schema = admin_client.get("/api/schema/?format=json")
    assert schema.status_code == 200
    operation = schema.json()["paths"]["/api/v1/agent/heartbeat/"]["post"]
    assert operation["summary"] == "I am alive"
