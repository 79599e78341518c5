"""Redis Cluster in the simulation: each master measured on its own, and clusters too big to start here predicted.

The shards of a queue share nothing but the cluster bus: each is a whole queue
on the single thread of the master serving its slot. A cluster of N masters,
each serving one shard worked by k workers, is therefore predicted as N
single-server models, one per master with that master's own profile
(``calibrate_nodes``), plus the one cost that grows with N. The progress
message of each settle call is a plain ``PUBLISH``, and a cluster forwards every
``PUBLISH`` over its bus to every other node, which spends ``bus_message_s`` of
its thread on it. With every master settling as often (the symmetric steady
state), each master pays ``(N - 1) * bus_message_s`` for each settle call of
its own, and the prediction charges that on each of its calls.

What is assumed, and why:

- **Workers on hosts of their own** (``cores`` 0): nobody runs fifty masters
  and their workers on one machine, and on a shared one the clients, not the
  masters, are the ceiling (the cluster benchmark measures that here).
- **k workers per shard.** A real ``ShardedWorker`` serves every shard from one
  process, with a claim loop per shard. Modelling its loops as workers of their
  own shard keeps the calls per master and the CPU per task; it leaves out the
  lock that runs one task at a time in a process, which matters only when one
  process serves many busy shards.
- **Masters beyond those measured repeat their profiles in turn**: a 50-node
  prediction from a 3-master local cluster assumes masters like those three.
- The sender's own cost of writing a message to each of N - 1 links is not
  charged (only the receivers'), so the prediction errs on the fast side.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis

from ..cluster import Address, cluster_slots, master_of, masters_of, queue_slot
from ..config import RunConfig, check_int_at_least
from ..connection import connect, node_url, resolve_url
from ..names import session_queue_name, session_token
from .calibrate import CalibrationError, calibrate
from .profile import CostProfile

__all__ = [
    "ClusterPrediction",
    "ClusterProfile",
    "bus_message_s",
    "calibrate_nodes",
    "masters",
    "predict",
    "predict_scaling",
]

BUS_MESSAGES = 50_000  # forwarded PUBLISHes per bus measurement: ~45 ms of a receiver's CPU, well above its cron's


@dataclass(frozen=True)
class ClusterProfile:
    """One CostProfile per master (``addresses[i]`` measured ``profiles[i]``), and what a forwarded PUBLISH costs."""

    addresses: tuple[str, ...]
    profiles: tuple[CostProfile, ...]
    bus_message_s: float

    def __post_init__(self) -> None:
        if not self.profiles or len(self.profiles) != len(self.addresses):
            raise ValueError("a cluster profile needs one profile per master address, and at least one")
        if self.bus_message_s < 0:
            raise ValueError(f"bus_message_s must be >= 0 (got {self.bus_message_s})")


@dataclass(frozen=True)
class ClusterPrediction:
    """The simulated throughput of ``nodes`` masters, each serving one shard worked by ``workers_per_node`` workers.

    ``redis_utilisation``: the busiest master's thread, busy over the run;
    ``bus_share``: the part of that busy time spent on other masters' PUBLISHes.
    """

    nodes: int
    workers_per_node: int
    tasks_per_s: float
    redis_utilisation: float
    bus_share: float

    @property
    def tasks_per_s_per_node(self) -> float:
        return self.tasks_per_s / self.nodes


def masters(url: str) -> list[Address]:
    """The masters of the cluster at ``url``, in slot order (one each). Raises ValueError on a single server."""
    client = connect(url)
    try:
        slots = cluster_slots(client)
    finally:
        client.close()
    if not slots:
        raise ValueError(f"{url} is not a Redis Cluster node (CLUSTER SLOTS has no answer)")
    return masters_of(slots)


def _queue_on(url: str, master: Address, base: str) -> str:
    """A queue name of this session whose slot ``master`` serves."""
    client = connect(url)
    try:
        slots = cluster_slots(client) or []
    finally:
        client.close()
    for i in range(10_000):  # 3 masters: the first few names; 16,384 slots on N masters: about N names
        name = session_queue_name(f"{base}-{i}")
        if master_of(slots, queue_slot(name)) == master:
            return name
    raise CalibrationError(f"no queue name found whose slot {master[0]}:{master[1]} serves")


def _cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def bus_message_s(url: str, messages: int = BUS_MESSAGES) -> float:
    """CPU a master spends on one PUBLISH forwarded to it over the cluster bus (0 with one master).

    One master publishes ``messages`` progress-like messages on a channel nobody
    subscribes to (as on every master but the listener's); the others' ``INFO cpu``
    is read around them. A last message on a channel each of them subscribes to
    marks the end: the bus keeps each link's order, so when it arrives, every
    message before it has been handled.
    """
    url = resolve_url(url)
    sender_at, *others = masters(url)
    if not others:
        return 0.0
    channel = f"wqsim:{{bus-{session_token()}}}:progress"
    marker = f"wqsim:bus-marker:{session_token()}"
    sender = connect(node_url(url, *sender_at))
    receivers = [connect(node_url(url, *address)) for address in others]
    subscriptions = [r.pubsub(ignore_subscribe_messages=True) for r in receivers]
    try:
        for s in subscriptions:
            s.subscribe(marker)
        before = [_cpu_s(r) for r in receivers]
        pipe = sender.pipeline(transaction=False)
        stamp = int(time.time() * 1000)
        for i in range(messages):
            pipe.publish(channel, f"{stamp}-{i} done {i}")
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        sender.publish(marker, "end")
        for s in subscriptions:
            deadline = time.monotonic() + 30
            while s.get_message(timeout=1.0) is None:
                if time.monotonic() > deadline:
                    raise CalibrationError("the cluster bus did not forward the measurement's messages within 30 s")
        after = [_cpu_s(r) for r in receivers]
    finally:
        for s in subscriptions:
            s.close()
        for c in (sender, *receivers):
            c.close()
    return statistics.fmean(max(a - b, 0.0) / messages for a, b in zip(after, before, strict=True))


def calibrate_nodes(url: str | None = None, tasks: int = 500) -> ClusterProfile:
    """Calibrate every master of the cluster at ``url``, each on a queue of its own slots, and the bus.

    The masters are measured one after another (a few seconds each at 500
    tasks), so each has the machine to itself, as the benchmark's layouts do.
    """
    url = resolve_url(url)
    nodes = masters(url)
    profiles = tuple(calibrate(url, tasks=tasks, queue_name=_queue_on(url, node, "calibrate")) for node in nodes)
    return ClusterProfile(
        addresses=tuple(f"{host}:{port}" for host, port in nodes),
        profiles=profiles,
        bus_message_s=bus_message_s(url),
    )


def predict(config: RunConfig, cluster: ClusterProfile, nodes: int) -> ClusterPrediction:
    """``config`` run on each of ``nodes`` masters at once (its ``tasks`` and ``workers`` are per master).

    Throughput is every master's tasks over the slowest master's makespan.
    """
    from . import simulate  # the package's entry point, defined after its modules

    check_int_at_least("nodes", nodes, 1)
    if config.shards > 1:
        raise ValueError("predict takes one shard's config (its tasks and workers, per master): drop shards")
    bus_s = (nodes - 1) * cluster.bus_message_s
    reports = [
        simulate(config, replace(profile, server_call_s=profile.server_call_s + bus_s), cores=0)
        for profile in cluster.profiles[:nodes]  # the rest repeat these: the same model, the same result
    ]
    slowest = max(r.makespan_s for r in reports)
    busiest = max(reports, key=lambda r: r.redis_utilisation)
    bus_share = busiest.redis_calls * bus_s / busiest.redis_busy_s if busiest.redis_busy_s > 0 else 0.0
    return ClusterPrediction(
        nodes=nodes,
        workers_per_node=config.workers,
        tasks_per_s=nodes * config.tasks / slowest if slowest > 0 else 0.0,
        redis_utilisation=busiest.redis_utilisation,
        bus_share=bus_share,
    )


def predict_scaling(config: RunConfig, cluster: ClusterProfile, nodes: Sequence[int]) -> list[ClusterPrediction]:
    """``predict`` for each number of masters in ``nodes``."""
    return [predict(config, cluster, n) for n in nodes]
