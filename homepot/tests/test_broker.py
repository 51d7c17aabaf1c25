"""homepot.broker's publish_task: the message apply_async would send, from a producer kept per
thread, which follows a change of broker and reconnects after the server drops it.

Against the tests' Redis broker (REDIS_URL), on a queue of each test's own."""

import datetime
import json
import uuid

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from kombu.exceptions import OperationalError

from homepot.broker import Channel, kept_producer, publish_task
from homepot.celery import app
from homepot.tests.celery_worker import celery_broker_away
from jobs_app.tasks import dispatch_job

ARGS = (7, "2026-12-05T12:00:00+00:00")


@pytest.fixture
def queue():
    """A queue of this test's own on the tests' broker, emptied and dropped after."""
    name = f"test-broker-{uuid.uuid4().hex}"
    saved = app.conf.task_default_queue
    app.conf.task_default_queue = name
    client = redis.Redis.from_url(app.conf.broker_url)
    yield client, name
    app.conf.task_default_queue = saved
    client.delete(name)


def _messages(client, name) -> list[dict]:
    """The queue's messages, oldest first, without what differs from one send to the next."""
    messages = [json.loads(raw) for raw in reversed(client.lrange(name, 0, -1))]
    for message in messages:
        for key in ("id", "root_id", "eta"):
            message["headers"].pop(key)
        for key in ("correlation_id", "delivery_tag"):
            message["properties"].pop(key)
    return messages


def test_the_message_is_the_one_apply_async_sends(queue):
    client, name = queue
    dispatch_job.apply_async(ARGS)
    publish_task(dispatch_job, ARGS)
    publish_task(dispatch_job, ARGS, argsrepr=repr(ARGS))
    by_apply_async, *by_publish_task = _messages(client, name)
    assert by_publish_task == [by_apply_async, by_apply_async]
    assert by_apply_async["headers"]["task"] == "jobs_app.tasks.dispatch_job"
    assert by_apply_async["properties"]["delivery_info"]["routing_key"] == name
    assert isinstance(kept_producer(app).channel, Channel)  # the project's transport


def test_a_countdown_is_the_same_eta(queue):
    client, name = queue
    before = timezone.now()
    publish_task(dispatch_job, ARGS, countdown=30)
    after = timezone.now()
    dispatch_job.apply_async(ARGS, countdown=30)
    (raw_published, raw_applied) = [json.loads(raw) for raw in client.lrange(name, 0, -1)]
    eta = datetime.datetime.fromisoformat(raw_applied["headers"]["eta"])
    assert before + datetime.timedelta(seconds=30) <= eta <= after + datetime.timedelta(seconds=30)
    (published, applied) = _messages(client, name)
    assert published == applied


def test_one_producer_is_kept_and_replaced_with_the_broker(queue):
    client, name = queue
    publish_task(dispatch_job, ARGS)
    kept = kept_producer(app)
    publish_task(dispatch_job, ARGS)
    assert kept_producer(app) is kept
    assert len(_messages(client, name)) == 2

    with celery_broker_away():
        with pytest.raises(OperationalError):
            publish_task(dispatch_job, ARGS)
        assert kept_producer(app) is not kept
    assert len(_messages(client, name)) == 2  # nothing reached the broker that was away

    publish_task(dispatch_job, ARGS)  # the broker back: a producer for it again
    assert len(_messages(client, name)) == 3


def test_a_connection_the_broker_dropped_is_replaced_and_the_message_sent_once(queue):
    client, name = queue
    publish_task(dispatch_job, ARGS)
    producer = kept_producer(app)
    pool = producer.channel.client.connection_pool
    ports = {conn._sock.getsockname()[1] for conn in pool._available_connections if conn._sock}
    assert ports
    admin = redis.Redis.from_url(settings.REDIS_URL)
    for port in ports:  # only this producer's own connections, on the shared server
        assert admin.client_kill(f"127.0.0.1:{port}")

    publish_task(dispatch_job, ARGS)
    assert len(_messages(client, name)) == 2
