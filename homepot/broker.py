"""Celery's Redis transport with one kept client per channel for its plain commands; and a
kept producer that sends a task's message without `apply_async`'s generic work around it.

kombu's Redis channel builds a new `redis.Redis` client for every publish (and every other
plain command): a client's constructor copies about 170 response callbacks, a quarter of
the CPU of a task's enqueue (docs/performance.md, issue 11, apihot3). A client holds no
connection of its own (each command borrows one from the channel's pool), so one client
per channel does the same work. It is rebuilt when the channel replaces its pool (after a
fork or a lost connection), so it never outlives the pool it draws from.

Selected by `CELERY_BROKER_TRANSPORT` (homepot/settings.py) for `redis://` brokers only;
everything else (the message format, acknowledgements, visibility timeout) is kombu's.
"""

import contextlib
import os
import threading

from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid


class Channel(kombu_redis.Channel):
    _kept_client = None

    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._kept_client
        if client is None or client.connection_pool is not self.pool:
            client = self._kept_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


# --- Sending a task from a web request ------------------------------------------------------
#
# `task.apply_async(args)` spent about 0.45 ms of CPU per message, three times what the
# message costs to build and hand to Redis (docs/performance.md, issue 11, jobs4): a producer
# acquired from Celery's pool and released, the queue declared again (kombu copies the queue
# to bind it to the producer's channel before it finds the declaration in its cache), the
# arguments' `saferepr`, Celery's option merging and routing written for every kind of call,
# and an AsyncResult nobody reads. publish_task sends the same message through Celery's own
# builder (`app.amqp.create_task_message`) and publisher (`app.amqp.send_task_message`:
# serialisation, the publish retry policy, the before/after_task_publish signals), from a
# producer this thread keeps, declaring the queue only when its connection has not.


class _KeptProducer(threading.local):
    producer = None
    pid = None
    pool = None


_kept = _KeptProducer()


def kept_producer(app):
    """This thread's producer for `app`'s broker, made on first use and kept (one broker
    connection per process and thread, besides Celery's pool). Made again in a forked
    child, and when the app's connection pool was replaced (a new broker URL: the tests'
    workers, `celery_broker_away`), the old one's connection closed. A connection that
    breaks is re-established by kombu's publish retry, as for a pooled producer."""
    pool = app.pool  # replaced with the broker settings; its identity says "same broker"
    producer = _kept.producer
    if producer is not None and _kept.pid == os.getpid() and _kept.pool is pool:
        return producer
    if producer is not None and _kept.pid == os.getpid():
        # A connection to the previous broker, maybe already broken: closed, whatever it says.
        with contextlib.suppress(Exception):
            producer.connection.release()
    producer = app.amqp.Producer(app.connection_for_write(), auto_declare=False)
    _kept.producer, _kept.pid, _kept.pool = producer, os.getpid(), pool
    return producer


def publish_task(task, args: tuple, *, countdown: float | None = None, argsrepr: str | None = None) -> None:
    """Send `task(*args)` as `task.apply_async(args, countdown=countdown)` would: the same
    message (headers, body, queue, properties; the task id is new), the same signals and
    publish retries, the same exceptions when the broker cannot be reached. `argsrepr`: the
    arguments as the message's header shows them, when the caller has it cheaper than
    Celery's `saferepr` (it must be what saferepr gives).

    Eager mode and calls from inside a worker's task go through apply_async itself (the one
    runs the task here, the other links the message to its parent task)."""
    app = task.app
    if app.conf.task_always_eager or app.current_worker_task is not None:
        task.apply_async(args, countdown=countdown)
        return
    amqp = app.amqp
    options = {name: value for name, value in task._get_exec_options().items() if value is not None}
    time_limit = options.pop("time_limit", None)
    soft_time_limit = options.pop("soft_time_limit", None)
    expires = options.pop("expires", None)
    ignore_result = options.pop("ignore_result", task.ignore_result)
    options = amqp.router.route(options, task.name, args, {}, task)
    task_id = uuid()
    message = amqp.create_task_message(
        task_id,
        task.name,
        args,
        {},
        countdown,
        expires=expires,
        reply_to=app.thread_oid,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        create_sent_event=app.conf.task_send_sent_event,
        ignore_result=ignore_result,
        argsrepr=argsrepr,  # None: Celery's saferepr
        kwargsrepr="{}",
    )
    producer = kept_producer(app)
    queue = options.get("queue")
    # Declared once per connection, as kombu's own cache does (it forgets on reconnect).
    if queue is not None and hash(queue) in (producer.connection.declared_entities or ()):
        options["declare"] = []
    with producer.connection._reraise_as_library_errors():
        if not ignore_result:
            app.backend.on_task_call(producer, task_id)
        amqp.send_task_message(producer, task.name, message, **options)
