"""Django's request signals on the WSGI fast path (monitoring_app.api.heartbeat_fast): sent,
before the first query, by a heartbeat or report that reaches PostgreSQL, so its database
connections are kept and closed as for any request; not sent by one answered from Redis
alone, which touches no connection (the signals were a fifth of its CPU).

Requests go through `homepot.wsgi.application`, the object gunicorn serves, in this process."""

import pytest
from django.core import signals
from django.db import connection

from monitoring_app import health_buffer
from monitoring_app.tests.test_health_buffer import own_redis, stored_per_device  # noqa: F401 (fixture)
from monitoring_app.tests.test_health_fast_path import HEALTH, _send, _terminal

HEARTBEAT = "/api/v1/agent/heartbeat"


@pytest.fixture
def observed():
    """(signals, queries): each request signal with the number of queries run before it, and
    every query run, while the test runs."""
    events, queries = [], []

    def started(**kwargs):
        events.append(("started", len(queries)))

    def finished(**kwargs):
        events.append(("finished", len(queries)))

    def count(execute, sql, params, many, context):
        queries.append(sql)
        return execute(sql, params, many, context)

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    with connection.execute_wrapper(count):
        yield events, queries
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


@pytest.mark.django_db
def test_a_heartbeat_that_reads_postgresql_is_signalled_before_its_first_query(observed):
    events, queries = observed
    device = _terminal()
    queries.clear()

    assert _send(device, HEARTBEAT, {}).status_code == 200  # its identity not in Redis yet

    assert queries and events == [("started", 0), ("finished", len(queries))]


@pytest.mark.django_db
def test_a_heartbeat_answered_from_redis_sends_no_signal(observed):
    events, queries = observed
    device = _terminal()
    assert _send(device, HEARTBEAT, {}).status_code == 200
    events.clear(), queries.clear()

    answer = _send(device, HEARTBEAT, {})

    assert (answer.status_code, answer.json()["device_id"]) == (200, device.device_id)
    assert (events, queries) == ([], [])


@pytest.mark.django_db
def test_a_report_answered_from_redis_sends_no_signal_and_one_that_is_not_is_signalled(
    own_redis,  # noqa: F811
    settings,
    monkeypatch,
    observed,
):
    events, queries = observed
    device = _terminal()
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 1}).status_code == 201
    events.clear(), queries.clear()

    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 2}).status_code == 201
    assert (events, queries) == ([], [])  # in the stream: identity and report from Redis alone

    monkeypatch.setattr(health_buffer, "_full_until", 0.0)
    settings.HOMEPOT_MONITORING_HEALTH_BUFFER_MAX_ENTRIES = 0  # the stream full: written at once
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 3}).status_code == 201
    assert _send(device, HEALTH, {"status": "healthy", "cpu_percent": 4}).status_code == 201
    assert events[0] == ("started", 0) and events[-1] == ("finished", len(queries))
    assert [name for name, _queries in events] == ["started", "finished"]  # the 4th only
    assert stored_per_device([device]) == {device.pk: [4]}
    assert health_buffer.drain(wait=True) == 3
