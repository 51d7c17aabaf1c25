"""A real Celery worker for tests: a thread of the test process (celery.contrib.testing), on
a queue of its own on a Redis database of the test's choosing, so it never meets another
worker's messages. The data it reads must be committed (transaction=True tests)."""

import contextlib
import uuid

from celery.contrib.testing.worker import start_worker
from celery.signals import task_postrun
from django.db import close_old_connections, connection

from homepot.celery import app


def _close_connection(**kwargs):
    # The worker thread's own database connection must not outlive the test (the test
    # database is flushed and, at the end, dropped).
    connection.close()


def reset_broker_connections():
    """Connections to the previous broker URL must not be reused for the new one. (Not
    force-closed: kombu's shared producer pools may still hold them.)"""
    app._pool = None
    app.amqp._producer_pool = None


@contextlib.contextmanager
def running_worker(*, broker: str, queue_prefix: str):
    """A solo-pool worker consuming `<queue_prefix>-<random>` on `broker`, which tasks
    enqueued meanwhile are sent to; everything restored after."""
    queue = f"{queue_prefix}-{uuid.uuid4().hex}"
    saved = {key: app.conf[key] for key in ("broker_url", "task_default_queue", "task_always_eager")}
    app.conf.update(broker_url=broker, task_default_queue=queue, task_always_eager=False)
    reset_broker_connections()
    task_postrun.connect(_close_connection, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", queues=[queue]):
            yield queue
    finally:
        task_postrun.disconnect(_close_connection)
        app.conf.update(saved)
        reset_broker_connections()
        close_old_connections()


@contextlib.contextmanager
def celery_broker_away():
    """Tasks enqueued meanwhile go to a Redis address where nothing listens (port 9,
    discard, is never served here): the Celery broker is away; restored after."""
    saved = app.conf.broker_url
    app.conf.broker_url = "redis://127.0.0.1:9/0"
    reset_broker_connections()
    try:
        yield
    finally:
        app.conf.broker_url = saved
        reset_broker_connections()
