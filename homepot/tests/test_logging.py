"""The development server's access log: no line per terminal poll or heartbeat."""

import logging

import pytest

SERVER = logging.getLogger("django.server")


def access_line(request_line: str, status: str, level=logging.INFO) -> logging.LogRecord:
    # As runserver's request handler logs it (django.core.servers.basehttp.log_message).
    return SERVER.makeRecord(
        SERVER.name, level, __file__, 0, '"%s" %s %s', (request_line, status, "42"), None
    )


@pytest.mark.parametrize(
    "request_line",
    [
        "GET /api/v1/agent/commands HTTP/1.1",
        "POST /api/v1/agent/heartbeat HTTP/1.1",
        "POST /api/v1/agent/deliveries/7/ack HTTP/1.1",
    ],
)
def test_successful_agent_requests_leave_no_line(request_line):
    assert not SERVER.filter(access_line(request_line, "200"))


def test_failed_agent_requests_and_people_s_requests_are_still_logged():
    assert SERVER.filter(access_line("GET /api/v1/agent/commands HTTP/1.1", "401", logging.WARNING))
    assert SERVER.filter(access_line("GET /admin/ HTTP/1.1", "200"))
    assert SERVER.filter(access_line("GET /api/v1/devices HTTP/1.1", "200"))
