"""Filters and formats of the log lines (a person reads the plain ones, a shipper the JSON)."""

import json
import logging
import time

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


def _task_of(record: logging.LogRecord) -> tuple[str | None, str | None]:
    """(task id, task name) of the Celery task a line is about: the task this thread is
    running, else the one Celery's own lines ("received", "succeeded", "raised") name in their
    `data` extra (they are logged outside the task's run)."""
    from celery._state import get_current_task

    task = get_current_task()
    if task is not None and task.request.id:
        return task.request.id, task.name
    data = getattr(record, "data", None)
    if isinstance(data, dict) and data.get("id"):
        return str(data["id"]), data.get("name")
    return None, None


class JsonFormatter(logging.Formatter):
    """One JSON object a line (HOMEPOT_LOG_JSON=true), for log shippers: time, level, logger,
    message, the request id of the request being served (homepot.request_context), the task
    id and name of the Celery task a worker's line is about, and the exception, if any. Keys
    are fixed so a query over them does not depend on the message."""

    converter = time.gmtime  # the "Z" below

    def format(self, record: logging.LogRecord) -> str:

        from homepot.request_context import current

        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current().request_id
        if request_id:
            entry["request_id"] = request_id
        task_id, task_name = _task_of(record)
        if task_id:
            entry["task_id"] = task_id
            entry["task"] = task_name
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
