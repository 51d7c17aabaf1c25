"""Celery's Redis transport with one kept client per channel for its plain commands.

kombu's Redis channel builds a new `redis.Redis` client for every publish (and every other
plain command): a client's constructor copies about 170 response callbacks, a quarter of
the CPU of a task's enqueue (docs/performance.md, issue 11, apihot3). A client holds no
connection of its own (each command borrows one from the channel's pool), so one client
per channel does the same work. It is rebuilt when the channel replaces its pool (after a
fork or a lost connection), so it never outlives the pool it draws from.

Selected by `CELERY_BROKER_TRANSPORT` (homepot/settings.py) for `redis://` brokers only;
everything else (the message format, acknowledgements, visibility timeout) is kombu's.
"""

from kombu.transport import redis as kombu_redis


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
