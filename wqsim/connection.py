"""One way to get a Redis client: ``connect(url)``.

The URL comes from the argument, else ``REDIS_URL``, else an embedded server
started on first use and shared by the whole process (see :mod:`wqsim.server`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import redis

from .server import FakeRedisServer, RedisServer, start_embedded

log = logging.getLogger("wqsim.connection")

_embedded: RedisServer | FakeRedisServer | None = None
_embedded_lock = threading.Lock()


class RedisUnavailable(ConnectionError):
    """Redis could not be reached within the bounded number of attempts."""


def redact(url: str) -> str:
    """The URL with any password replaced by '***', for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def resolve_url(url: str | None = None, backend: str | None = None) -> str:
    """``url``, else ``$REDIS_URL``, else the embedded server's URL (starting it once).

    ``backend`` (or ``$WQSIM_EMBEDDED``) picks the embedded server: 'auto',
    'redis-server' or 'fakeredis'.
    """
    url = url or os.environ.get("REDIS_URL")
    if url:
        return url
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            _embedded = start_embedded(backend or os.environ.get("WQSIM_EMBEDDED", "auto"))
        return _embedded.url


def embedded_server() -> RedisServer | FakeRedisServer | None:
    """The embedded server of this process, if one was started."""
    return _embedded


def connect(
    url: str | None = None,
    *,
    attempts: int = 5,
    backend: str | None = None,
    logger: logging.Logger | None = None,
) -> redis.Redis:
    """A client (str replies) that has answered PING; retries ``attempts`` times with backoff.

    The Go original retried forever; a bounded retry fails with a message that
    names the URL, so a typo is an error rather than a hang.
    """
    logger = logger or log
    url = resolve_url(url, backend)
    try:
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2.0)
    except ValueError as exc:
        raise RedisUnavailable(f"bad Redis URL {redact(url)!r}: {exc}") from None
    delay_s = 0.1
    for attempt in range(1, attempts + 1):
        try:
            client.ping()
            logger.debug("Connected to Redis at %s", redact(url))
            return client
        except redis.AuthenticationError as exc:
            raise RedisUnavailable(f"Redis at {redact(url)} refused the credentials: {exc}") from None
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as exc:
            if attempt == attempts:
                client.close()
                raise RedisUnavailable(
                    f"cannot reach Redis at {redact(url)} after {attempts} attempts: {exc}"
                ) from None
            logger.debug("Redis at %s not reachable (%s); retry %d/%d", redact(url), exc, attempt, attempts - 1)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
    raise AssertionError("unreachable")
