"""Redis clients for the request paths that talk to Redis themselves (login rate limits, the
heartbeat buffer): one per URL and timeout, made once per process.

Short timeouts: a hung Redis must not hold a request (and a worker) for long; each caller
decides what to do without Redis.
"""

import functools

import redis


@functools.lru_cache(maxsize=8)
def redis_client(url: str, timeout: float) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
