"""Task bodies shared by every peer adapter (RQ, Celery, Huey, raw redis-py).

They live in a small importable module so that a worker in another process
(``rq worker``, ``celery worker``) can import them by dotted path, and so that
every peer runs literally the same Python function.
"""

from __future__ import annotations

import time

import redis

# One client per URL per process: the latency task runs hundreds of times and a
# new connection each time would measure TCP set-up, not pickup latency.  The
# warm-up task of every latency run opens it before measuring starts.
_clients: dict[str, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url)
    return client


def close_clients() -> None:
    """Close the cached clients (after an in-process worker has stopped)."""
    while _clients:
        _clients.popitem()[1].close()


def noop() -> None:
    """The benchmark workload: nothing, so that only the queue's own cost is measured."""
    return None


def mark(url: str, key: str) -> None:
    """Write the wall-clock time at which this task *started* to ``key``.

    Throughput is measured between a ``mark(start)`` job enqueued first and a
    ``mark(end)`` job enqueued last, so worker start-up and shut-down are
    excluded.  The time is taken before connecting; the marker uses its own
    short-lived client so it depends on nothing the peer library set up.
    """
    started = time.time()
    client = redis.Redis.from_url(url)
    try:
        client.set(key, repr(started))
    finally:
        client.close()


def record_latency(url: str, key: str, enqueued: float) -> None:
    """RPUSH ``time.time() - enqueued`` (pickup latency, seconds) onto the list ``key``."""
    latency = time.time() - enqueued
    _client(url).rpush(key, repr(latency))
