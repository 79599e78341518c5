"""One way to get a Redis client: ``connect(url)``, or ``connect(url, queue=name)`` for one queue's keys.

The URL comes from the argument, else ``REDIS_URL``, else an embedded server
started on first use and shared by the whole process (see :mod:`wqsim.server`).

The URL may name any node of a Redis Cluster, or list several as startup nodes
(``redis://h1:7000,h2:7001/0``: the first that answers is used). ``connect(url,
queue=name)`` then returns a client of the master serving that queue's slot,
which follows it across failovers, over TLS too (see :mod:`wqsim.cluster`). It
is a plain client of one node rather than redis-py's ``RedisCluster``: the
transport pipelines on a private connection and blocks on a wake-up list (see
:mod:`wqsim.transport`), as on a single server.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import redis

from .cluster import cluster_slots, queue_slot, routed_client
from .server import FakeRedisServer, RedisServer, start_embedded
from .urls import check_url, startup_urls

log = logging.getLogger("wqsim.connection")

PROBE_TIMEOUT_S = 5.0  # how long the first PING may take: a server that says nothing is not a usable Redis

_embedded: RedisServer | FakeRedisServer | None = None
_embedded_lock = threading.Lock()


class RedisUnavailable(ConnectionError):
    """Redis could not be reached within the bounded number of attempts, or what answered is
    not Redis, or TLS verification failed (the CLI's exit code 3)."""


class BadRedisUrl(RedisUnavailable):
    """The URL itself is wrong: no host, a bad db path, an unknown scheme or option, a database
    the server does not have (the CLI's exit code 2: a configuration error, not an outage)."""


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
    queue: str | None = None,
    attempts: int = 5,
    backend: str | None = None,
    logger: logging.Logger | None = None,
) -> redis.Redis:
    """A client (str replies) that has answered PING; retries ``attempts`` times with backoff.

    The Go original retried forever; a bounded retry fails with a message that
    names the URL, so a typo is an error rather than a hang.

    ``queue``: the client is for that queue's keys. On a single server that changes
    nothing; on a Redis Cluster the client is one of the master serving the queue's slot.
    """
    logger = logger or log
    url = resolve_url(url, backend)
    startup = startup_urls(url)
    client = _connect(url, attempts, logger) if len(startup) == 1 else _connect_any(url, startup, attempts, logger)
    if queue is None and len(startup) == 1:
        return client
    slots = cluster_slots(client)
    if slots is None:  # a single server (or a user who may not ask): the client serves every queue
        if len(startup) > 1:
            client.close()
            raise BadRedisUrl(
                f"bad Redis URL {redact(url)!r}: a list of hosts names a Redis Cluster's startup nodes, "
                f"and {redact(node_url(url, *_address(client)))} is not a cluster node "
                "(or this user may not ask CLUSTER SLOTS)"
            )
        return client
    if queue is None:
        return client
    listed = [_address_of(u) for u in startup]
    routed = routed_client(client, queue, slots, also=listed)
    client.close()
    logger.debug("Queue %r is served by cluster slot %d", queue, queue_slot(queue))
    return routed


def node_url(url: str, host: str, port: int) -> str:
    """``url`` pointed at another node of the same cluster: credentials, TLS and options kept."""
    parts = urlsplit(url)
    userinfo, _, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "", parts.port or 6379)


def _connect_any(url: str, startup: list[str], attempts: int, logger: logging.Logger) -> redis.Redis:
    """The first of ``startup`` (one URL per listed node) that answers, each tried once a round, ``attempts`` rounds."""
    try:
        check_url(url)  # the list as a whole: an empty entry is named as such
    except ValueError as exc:
        raise BadRedisUrl(f"bad Redis URL {redact(url)!r}: {exc}") from None
    delay_s = 0.1
    failures: list[str] = []
    for attempt in range(1, attempts + 1):
        failures = []
        for one in startup:
            try:
                return _connect(one, 1, logger)
            except BadRedisUrl:
                raise
            except RedisUnavailable as exc:
                failures.append(str(exc))
        if attempt < attempts:
            logger.debug("No startup node of %s answered; retry %d/%d", redact(url), attempt, attempts - 1)
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 1.0)
    raise RedisUnavailable(
        f"cannot reach any startup node of {redact(url)} after {attempts} attempts: {'; '.join(failures)}"
    )


def _address(client: redis.Redis) -> tuple[str, int]:
    kwargs = client.connection_pool.connection_kwargs
    return (str(kwargs.get("host", "")), int(kwargs.get("port", 0)))


def _connect(url: str, attempts: int, logger: logging.Logger) -> redis.Redis:
    try:
        check_url(url)
        client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2.0)
        # The first PING goes through a client with a read timeout: a server that never answers
        # is reported, not waited on forever. The client returned has none (BLPOP blocks).
        probe = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=PROBE_TIMEOUT_S
        )
    except ValueError as exc:
        raise BadRedisUrl(f"bad Redis URL {redact(url)!r}: {exc}") from None
    delay_s = 0.1
    try:
        for attempt in range(1, attempts + 1):
            try:
                if probe.ping() is not True:
                    raise redis.exceptions.InvalidResponse("it did not answer PING with PONG")
                logger.debug("Connected to Redis at %s", redact(url))
                return client
            except redis.AuthenticationError as exc:
                raise RedisUnavailable(f"Redis at {redact(url)} refused the credentials: {exc}") from None
            except TypeError as exc:  # an option redis-py does not know, e.g. ?ssl_ca_cert=
                raise BadRedisUrl(f"bad Redis URL {redact(url)!r}: {exc}") from None
            except redis.exceptions.InvalidResponse as exc:
                raise RedisUnavailable(f"the server at {redact(url)} is not Redis: {exc}") from None
            except redis.ResponseError as exc:
                if "DB index is out of range" in str(exc):
                    raise BadRedisUrl(
                        f"bad Redis URL {redact(url)!r}: the server has no such database ({exc})"
                    ) from None
                raise
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, OSError) as exc:
                tls = _tls_failure(exc)
                if tls is not None:  # retrying cannot help: the certificate will not change
                    raise RedisUnavailable(tls.replace("{url}", redact(url))) from None
                if attempt == attempts:
                    client.close()
                    raise RedisUnavailable(
                        f"cannot reach Redis at {redact(url)} after {attempts} attempts: {exc}"
                    ) from None
                logger.debug("Redis at %s not reachable (%s); retry %d/%d", redact(url), exc, attempt, attempts - 1)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)
    finally:
        probe.close()
    raise AssertionError("unreachable")


def _tls_failure(exc: BaseException) -> str | None:
    """A message (with a ``{url}`` field) if ``exc`` came from TLS, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return (
                f"TLS verification failed for Redis at {{url}}: {seen.verify_message}; "
                "is ssl_ca_certs the CA that signed the server's certificate?"
            )
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake with {{url}} failed: {seen.reason or seen}; is it a TLS port?"
        seen = seen.__cause__ or seen.__context__
    return None
