"""The PostgreSQL backend's health check: a persistent connection the server closed is
replaced before a request uses it, and a healthy one costs no `SELECT 1` round trip."""

import psycopg
import pytest
from django.db import close_old_connections, connection
from django.test import Client

from devices_app.services import device_credential_issue
from devices_app.tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db(transaction=True)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def statements_sent(monkeypatch) -> list[str]:
    """Every statement psycopg sends, including Django's own health check (which bypasses
    Django's query log)."""
    sent = []
    original = psycopg.Cursor.execute

    def recording(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", recording)
    return sent


@pytest.fixture
def persistent(settings):
    # The test client's requests fire request_started/finished, as gunicorn's do; keep the
    # connection between them as production does.
    connection.settings_dict["CONN_MAX_AGE"] = 60
    connection.settings_dict["CONN_HEALTH_CHECKS"] = True
    connection.health_check_enabled = True
    yield
    connection.settings_dict["CONN_MAX_AGE"] = 0


def heartbeat(client, secret):
    # Under gunicorn, request_started runs close_old_connections, which arms the health
    # check for the request; Django's test client leaves that signal out, so do it here.
    close_old_connections()
    return client.post(
        "/api/v1/agent/heartbeat",
        data=b"",
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Device {secret}",
    )


def test_a_connection_the_server_closed_is_replaced_before_the_request_uses_it(persistent):
    device = DeviceFactory()
    secret = device_credential_issue(actor=None, device=device)[1]
    client = Client()
    assert heartbeat(client, secret).status_code == 200
    doomed = backend_pid()
    with psycopg.connect(
        **{
            k: v
            for k, v in connection.get_connection_params().items()
            if k in ("host", "port", "user", "dbname")
        },
        autocommit=True,
    ) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", [doomed])  # waits until it is gone

    assert heartbeat(client, secret).status_code == 200  # not a 500
    assert backend_pid() != doomed


def test_a_quiet_healthy_connection_is_not_checked_with_a_round_trip(persistent, monkeypatch):
    device = DeviceFactory()
    secret = device_credential_issue(actor=None, device=device)[1]
    client = Client()
    heartbeat(client, secret)
    sent = statements_sent(monkeypatch)

    assert heartbeat(client, secret).status_code == 200
    assert "SELECT 1" not in sent
