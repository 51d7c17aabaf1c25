"""Filters for the log lines a person reads."""

import logging

AGENT_PATH = "/api/v1/agent/"


class QuietAgentRequests(logging.Filter):
    """Drop the development server's access line of a successful agent API request.

    Every terminal polls every few seconds and heartbeats every minute: one line each would
    bury everything else (30 demo terminals make hundreds a minute). Agent requests that go
    wrong (4xx, 5xx) are logged at WARNING/ERROR and pass; so does everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.args:
            return True
        request_line = str(record.args[0]) if isinstance(record.args, tuple) else ""
        return AGENT_PATH not in request_line
