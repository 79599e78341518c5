"""One logical queue split into shards: ``q`` becomes ``q:0`` ... ``q:S-1``, each a whole queue.

A single queue lives in one hash slot, so on a Redis Cluster it is served by one
master's single thread however many nodes there are. Sharding spreads it: shard
``i`` is an ordinary queue named ``q:i`` (keys ``wqsim:{q:i}:...``, its own slot),
with every script, lease and audit exactly as for any queue, so no guarantee of
one queue is weakened. What is added is only routing:

* a task goes to shard ``crc32(id) % S``: consecutive ids spread evenly, and
  anyone can tell where a task lives from its id alone;
* a task with prerequisites goes where they are. A graph is enqueued whole, as on
  any queue (a prerequisite outside the call is refused, GraphError), and each of
  its connected parts goes to the shard of its smallest id. So a dependency never
  crosses shards: releasing a dependent stays one atomic script on one slot, which
  a release across slots (two masters) could not be, and exactly-once release
  keeps the same proof as on one queue;
* ids are drawn from one counter (shard 0's), so they are unique across shards
  and the attempts of every shard join into one table.

On a single server the shards simply share it: sharding changes nothing there
but the names, which is how the fast tests run it on fakeredis.

When tasks are enqueued, the queue records how many shards it is split into, and
so does each shard (``Keys.layout``). A worker, reaper or status given another
number would leave some shards unserved or unseen without a word;
``check_layout`` refuses it in one line (ShardLayoutError, a ValueError: the
CLI's exit code 2).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .audit import Audit, audit
from .cluster import cluster_slots, masters_of
from .connection import connect
from .graph import validate as validate_graph
from .keys import IdRange, shard_name
from .queue import Queue
from .task import Task

if TYPE_CHECKING:
    import pandas as pd

MAX_SHARDS = 1024


def shard_names(queue: str, shards: int) -> list[str]:
    """The names of ``queue``'s shards; one shard is the queue itself, unsharded."""
    check_shards(shards)
    return [queue] if shards == 1 else [shard_name(queue, i) for i in range(shards)]


def check_shards(shards: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be an integer from 1 to {MAX_SHARDS} (got {shards!r})")
    return shards


class ShardLayoutError(ValueError):
    """A queue's shards record another number of shards than the one given."""


def recorded_layout(url: str | None, queue: str) -> int | None:
    """How many shards ``queue`` is split into, as recorded (None: it is not split)."""
    home = Queue(connect(url, queue=queue), queue)
    try:
        return home.split_into()
    finally:
        home.client.close()


def check_layout(url: str | None, queue: str, shards: int) -> None:
    """ShardLayoutError if ``queue`` was split into another number of shards than ``shards``.

    One shard is the queue itself: where it was split, its tasks are in the shards and
    a worker of the queue itself would find none of them; where it was not and holds
    tasks, a worker of shards would find none.
    """
    home = Queue(connect(url, queue=queue), queue)
    try:
        split = home.split_into()
        unsplit_tasks = split is None and shards > 1 and home.counters().get("total", 0) > 0
    finally:
        home.client.close()
    if split is not None and split != shards:
        raise ShardLayoutError(
            f"queue {queue!r} is in {split} shards ({queue}:0 to {queue}:{split - 1}), not {shards}: "
            f"give --shards {split}, or purge them first (generate --fresh)"
        )
    if unsplit_tasks:
        raise ShardLayoutError(
            f"queue {queue!r} holds its tasks unsharded, not in {shards} shards: drop --shards, "
            "or purge it first (generate --fresh)"
        )
    if shards > 1:
        ShardedQueue.connect(url, queue, shards).check_layout()  # and every shard agrees


def shard_of(task_id: str, shards: int) -> int:
    """The shard a task without prerequisites goes to (CRC-32 of its id: stable across processes)."""
    return zlib.crc32(task_id.encode()) % shards


@dataclass(frozen=True)
class ShardedQueue:
    """A logical queue over its shards, one :class:`~wqsim.queue.Queue` each (on its own node)."""

    name: str
    queues: tuple[Queue, ...]
    home: Queue | None = None  # the queue itself, where its layout is recorded (connect gives it)

    @classmethod
    def connect(cls, url: str | None, name: str, shards: int, attempts: int = 5) -> ShardedQueue:
        """Each shard's queue on the node that serves its slot (see wqsim.connection.connect)."""
        queues = tuple(Queue(connect(url, queue=n, attempts=attempts), n) for n in shard_names(name, shards))
        home = queues[0] if shards == 1 else Queue(connect(url, queue=name, attempts=attempts), name)
        return cls(name, queues, home)

    def __post_init__(self) -> None:
        check_shards(len(self.queues))

    @property
    def shards(self) -> int:
        return len(self.queues)

    def __iter__(self) -> Iterator[Queue]:
        return iter(self.queues)

    def servers(self) -> list[str]:
        """The server (host:port) each shard's client talks to: on a cluster, the master of its slot."""
        out = []
        for q in self.queues:
            kwargs = q.client.connection_pool.connection_kwargs
            out.append(f"{kwargs.get('host')}:{kwargs.get('port')}" if "host" in kwargs else str(kwargs.get("path")))
        return out

    def placement_warning(self) -> str | None:
        """A line to log if the shards land on fewer masters of a cluster than they could (else None).

        Each shard's slot is the CRC16 of its name, so the queue's name decides where its shards
        go: three shards cover three masters only 2 times in 9, by chance."""
        slots = cluster_slots(self.queues[0].client) if self.shards > 1 else None
        if not slots:
            return None
        masters, used = len(masters_of(slots)), len(set(self.servers()))
        if used >= min(self.shards, masters):
            return None
        return (
            f"Queue {self.name!r}: its {self.shards} shards land on {used} of the cluster's {masters} masters "
            "(each shard's slot is the CRC16 of its name); another queue name, or more shards, spreads them otherwise"
        )

    def check_layout(self) -> None:
        """ShardLayoutError if a shard records another number of shards than this queue has."""
        for q in self.queues:
            recorded = q.recorded_shards()
            if recorded is not None and recorded != self.shards:
                raise ShardLayoutError(
                    f"queue {self.name!r} is in {recorded} shards ({q.name} says so), not {self.shards}: "
                    f"give --shards {recorded}, or purge its shards first"
                )

    # -- writing ----------------------------------------------------------------------
    def record_layout(self) -> None:
        """Write on the queue and on every shard how many shards there are (enqueue does): roles
        given another number are refused."""
        if self.home is not None:
            self.home.client.hset(self.home.keys.layout, "split_into", str(self.shards))
        for q in self.queues:
            q.client.hset(q.keys.layout, "shards", str(self.shards))

    def reserve_ids(self, count: int) -> IdRange:
        """Ids unique across the shards, from one counter (shard 0's)."""
        return self.queues[0].reserve_ids(count)

    def enqueue(
        self,
        tasks: Sequence[Task],
        package_size: int | None = None,
        allow_failure: bool | None = None,
        chunk: int = 5000,
    ) -> list[str]:
        """Route each task to its shard (see the module docstring), then enqueue each shard's part
        as Queue.enqueue does (each part atomic); returns the package ids of every shard."""
        if any(t.depends_on for t in tasks):
            validate_graph(tasks)  # the whole graph, before any shard's part is written
        if self.shards > 1:
            self.record_layout()
        parts: dict[int, list[Task]] = {}
        for task, shard in zip(tasks, self.placement(tasks), strict=True):
            parts.setdefault(shard, []).append(task)
        packages: list[str] = []
        for shard in sorted(parts):
            packages += self.queues[shard].enqueue(parts[shard], package_size, allow_failure, chunk)
        return packages

    def placement(self, tasks: Sequence[Task]) -> list[int]:
        """The shard of each task: that of the smallest id of its part of the graph."""
        component = _Components(t.id for t in tasks)
        for t in tasks:
            for dep in t.depends_on:
                if dep in component:
                    component.join(t.id, dep)  # an unknown one is Queue.enqueue's to refuse
        return [shard_of(component.root(t.id), self.shards) for t in tasks]

    # -- reading ----------------------------------------------------------------------
    def audit(self, expected: int | None = None) -> ShardedAudit:
        """Every shard audited on its own (each one atomic snapshot), and their sum.

        ``expected``: how many tasks the caller enqueued over all shards, if it knows; tasks
        of which no shard has any record (a shard's keys all gone) are then lost in the total.
        """
        return ShardedAudit(tuple(audit(q) for q in self.queues), expected)

    def counters(self) -> dict[str, int]:
        """The stats counters of every shard, added up."""
        total: dict[str, int] = {}
        for q in self.queues:
            for name, value in q.counters().items():
                total[name] = total.get(name, 0) + value
        return total

    def drained(self) -> bool:
        return all(q.drained() for q in self.queues)

    def attempts(self) -> pd.DataFrame:
        """Every shard's attempts in one table (the ids are unique across shards)."""
        import pandas as pd

        from . import metrics  # with pandas, imported on first use: workers and the CLI start without them

        frames = [metrics.attempts(q) for q in self.queues]
        return pd.concat(frames, ignore_index=True) if frames else metrics.attempts(self.queues[0])

    def purge(self) -> None:
        """Every shard's keys, and the record of the layout on the queue itself (its other keys are its own)."""
        for q in self.queues:
            q.purge()
        if self.home is not None and self.shards > 1:
            self.home.client.delete(self.home.keys.layout)


@dataclass(frozen=True)
class ShardedAudit:
    """The audits of a sharded queue's shards; ``total`` adds them up (a clean total: every shard clean)."""

    shards: tuple[Audit, ...]
    expected: int | None = None

    @property
    def total(self) -> Audit:
        sums: dict[str, Any] = {}
        for f in fields(Audit):
            values = [getattr(a, f.name) for a in self.shards]
            if f.name in ("lost_ids", "twice_ids"):
                sums[f.name] = tuple(i for v in values for i in v)
            elif f.name == "counters_lost":
                sums[f.name] = any(values)
            else:
                sums[f.name] = sum(values)
        unknown = (self.expected or 0) - sums["generated"]
        if unknown > 0:  # created, yet no shard remembers them
            sums["generated"] += unknown
            sums["lost"] += unknown
        return Audit(**sums)

    @property
    def clean(self) -> bool:
        return self.total.clean

    def summary(self) -> str:
        per_shard = "; ".join(f"shard {i}: {a.done} done, {a.lost} lost" for i, a in enumerate(self.shards))
        return f"{self.total.summary()} ({per_shard})"


class _Components:
    """Union-find over task ids: the connected parts of a dependency graph."""

    def __init__(self, ids: Iterable[str]) -> None:
        self._parent = {i: i for i in ids}

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._parent

    def root(self, task_id: str) -> str:
        parent = self._parent
        while parent[task_id] != task_id:
            parent[task_id] = parent[parent[task_id]]
            task_id = parent[task_id]
        return task_id

    def join(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)
