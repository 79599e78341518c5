"""Redis Cluster routing: a queue's client talks to whichever master serves the queue's slot now.

Every key of a queue carries its hash tag (see :mod:`wqsim.keys`), so a queue is
one slot, served by one master, and every script runs there unchanged. The
client is a plain ``redis.Redis`` (the transport pipelines on a private
connection and blocks on a wake-up list, as on a single server), whose
connections are :class:`SlotConnection`: each (re)connect first asks the
cluster which master serves the slot. So after a failover, a connection that
broke (the old master died) or that the old master redirected (MOVED: it is a
replica now) reconnects to the new master through the reconnect logic every
worker, listener and reaper already has for a Redis restart. During the
failover itself (about twice ``cluster-node-timeout``) the slot answers
CLUSTERDOWN or nothing; that is an outage like any other, ridden out the same way.
Over TLS (``rediss://``) the same holds: :class:`SlotSSLConnection` asks the
cluster over TLS, with the URL's certificates, and connects the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from .keys import Keys

log = logging.getLogger("wqsim.cluster")

Address = tuple[str, int]
LOCATE_TIMEOUT_S = 1.0  # one node's answer to CLUSTER SLOTS, while locating a slot's master

# What a cluster node answers when the slot is not (or no longer) its to serve, or not served at all.
REROUTE = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.ClusterDownError)


def queue_slot(queue: str) -> int:
    return int(key_slot(Keys(queue).ready.encode()))


def cluster_slots(client: redis.Redis) -> list[Any] | None:
    """CLUSTER SLOTS, or None if the server is not part of a cluster (or will not say:
    cluster support disabled, an unknown command on fakeredis, a user without it)."""
    try:
        return list(client.execute_command("CLUSTER SLOTS"))
    except redis.ResponseError:
        return None


def master_of(slots: Sequence[Any], slot: int) -> Address | None:
    """The (host, port) of the master serving ``slot`` in a CLUSTER SLOTS reply (None: unassigned)."""
    for first, last, master, *_replicas in slots:
        if int(first) <= slot <= int(last):
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            return host, int(master[1])
    return None


def masters_of(slots: Sequence[Any]) -> list[Address]:
    """The masters a CLUSTER SLOTS reply names, in slot order, once each."""
    found: dict[Address, None] = {}
    for first, *_ in sorted(slots, key=lambda s: int(s[0])):
        address = master_of(slots, int(first))
        if address is not None:
            found[address] = None
    return list(found)


def nodes_of(slots: Sequence[Any]) -> list[Address]:
    """Every node a CLUSTER SLOTS reply names, masters and replicas, in order, once each."""
    found: dict[Address, None] = {}
    for _first, _last, *nodes in slots:
        for node in nodes:
            host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
            found[(host, int(node[1]))] = None
    return list(found)


def locate(
    slot: int, seeds: Sequence[Address], kwargs: dict[str, Any], connection_class: type[redis.Connection]
) -> Address:
    """Ask the seeds in turn which master serves ``slot`` now; ConnectionError if none can say.

    ``kwargs`` and ``connection_class``: how the client connects (credentials, TLS and its
    certificates), for the probes to connect the same way."""
    errors = []
    for host, port in seeds:
        options = {k: v for k, v in kwargs.items() if k not in ("host", "port", "retry", "slot", "seeds")}
        options.update(
            host=host,
            port=port,
            socket_timeout=LOCATE_TIMEOUT_S,
            socket_connect_timeout=LOCATE_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # the next seed, not redis-py's ~4 s of retries on a dead one
        )
        probe = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=connection_class, **options))
        try:
            slots = cluster_slots(probe)
            master = master_of(slots or [], slot)
            if master is not None:
                return master
            errors.append(f"{host}:{port} knows no master for slot {slot}")
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            errors.append(f"{host}:{port}: {exc}")
        finally:
            probe.close()
    raise redis.ConnectionError(f"no cluster node could say which master serves slot {slot}: {'; '.join(errors)}")


class _FollowsSlot:
    """What makes a connection follow one slot: locate its master at every connect, and treat a
    redirection as a broken connection. Mixed into redis-py's plain and TLS connection classes."""

    host: str
    port: int
    plain: type[redis.Connection]  # the redis-py class it extends, which the probes use too

    def __init__(self, *, slot: int, seeds: Sequence[Address], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slot = slot
        self.seeds = list(seeds)
        self.options = kwargs  # how to connect: the probes connect the same way

    def _connect(self) -> Any:
        here = (self.host, self.port)
        located = locate(self.slot, [here, *(s for s in self.seeds if s != here)], self.options, self.plain)
        if located != here:
            log.info("Slot %d is served by %s:%d now (was %s:%d)", self.slot, *located, *here)
            self.host, self.port = located
        return super()._connect()  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except REROUTE as exc:
            # Not a command error: the slot has moved (a failover) or is being failed over.
            # Dropped and raised as a connection error, the call is retried on the new master.
            self.disconnect()  # type: ignore[attr-defined]
            raise redis.ConnectionError(f"cluster slot {self.slot} is not served here now: {exc}") from exc


class SlotConnection(_FollowsSlot, redis.Connection):
    """A connection to the master serving one slot: located anew at every (re)connect."""

    plain = redis.Connection


class SlotSSLConnection(_FollowsSlot, redis.SSLConnection):
    """The same over TLS (``rediss://``), located with the URL's certificates."""

    plain = redis.SSLConnection


def routed_client(client: redis.Redis, queue: str, slots: Sequence[Any], also: Sequence[Address] = ()) -> redis.Redis:
    """A client like ``client`` (same credentials and options) whose connections follow ``queue``'s slot.

    At each reconnect the slot's master is asked of the nodes CLUSTER SLOTS named, then of ``also``
    (the startup nodes the URL listed, which may be spelled otherwise).
    """
    slot = queue_slot(queue)
    master = master_of(slots, slot)
    if master is None:
        raise redis.ConnectionError(f"no cluster node serves queue {queue!r} (slot {slot} is not assigned)")
    known = nodes_of(slots)
    kwargs = dict(client.connection_pool.connection_kwargs)
    kwargs.update(host=master[0], port=master[1], slot=slot, seeds=[*known, *(a for a in also if a not in known)])
    tls = issubclass(client.connection_pool.connection_class, redis.SSLConnection)
    pool = redis.ConnectionPool(connection_class=SlotSSLConnection if tls else SlotConnection, **kwargs)
    return redis.Redis(connection_pool=pool)
