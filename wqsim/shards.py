"""One logical queue split into shards: ``q`` becomes ``q:0`` ... ``q:S-1``, each a whole queue.

A single queue lives in one hash slot, so on a Redis Cluster it is served by one
master's single thread however many nodes there are. Sharding spreads it: shard
``i`` is an ordinary queue named ``q:i`` (keys ``wqsim:{q:i}:...``, its own slot),
with every script, lease and audit exactly as for any queue, so no guarantee of
one queue is weakened. What is added is only routing:

* a task goes to shard ``crc32(id) % S``: consecutive ids spread evenly, and
  anyone can tell where a task lives from its id alone;
* a task with prerequisites goes where they are. Tasks enqueued together that
  depend on one another (a connected component of the graph) all go to the shard
  of the component's smallest id; a task whose prerequisites were enqueued
  earlier goes to their shard. Prerequisites on two shards are refused before
  anything is written (:class:`CrossShardDependency`): releasing a dependent is
  one atomic script on one slot, and a release across slots could not be;
* ids are drawn from one counter (shard 0's), so they are unique across shards
  and the attempts of every shard join into one table.

On a single server the shards simply share it: sharding changes nothing there
but the names, which is how the fast tests run it on fakeredis.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from .audit import Audit, audit
from .connection import connect
from .keys import IdRange, shard_name
from .queue import Queue
from .task import Task

if TYPE_CHECKING:
    import pandas as pd

MAX_SHARDS = 1024


class CrossShardDependency(ValueError):
    """A task's prerequisites live on more than one shard: nothing was written."""


def shard_names(queue: str, shards: int) -> list[str]:
    """The names of ``queue``'s shards; one shard is the queue itself, unsharded."""
    check_shards(shards)
    return [queue] if shards == 1 else [shard_name(queue, i) for i in range(shards)]


def check_shards(shards: int) -> int:
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be an integer from 1 to {MAX_SHARDS} (got {shards!r})")
    return shards


def shard_of(task_id: str, shards: int) -> int:
    """The shard a task without prerequisites goes to (CRC-32 of its id: stable across processes)."""
    return zlib.crc32(task_id.encode()) % shards


@dataclass(frozen=True)
class ShardedQueue:
    """A logical queue over its shards, one :class:`~wqsim.queue.Queue` each (on its own node)."""

    name: str
    queues: tuple[Queue, ...]

    @classmethod
    def connect(cls, url: str | None, name: str, shards: int, attempts: int = 5) -> ShardedQueue:
        """Each shard's queue on the node that serves its slot (see wqsim.connection.connect)."""
        return cls(name, tuple(Queue(connect(url, queue=n, attempts=attempts), n) for n in shard_names(name, shards)))

    def __post_init__(self) -> None:
        check_shards(len(self.queues))

    @property
    def shards(self) -> int:
        return len(self.queues)

    def __iter__(self) -> Iterator[Queue]:
        return iter(self.queues)

    # -- writing ----------------------------------------------------------------------
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
        as Queue.enqueue does; returns the package ids of every shard. Every shard's part is
        checked before any is written: a cross-shard dependency writes nothing."""
        parts: dict[int, list[Task]] = {}
        for task, shard in zip(tasks, self.placement(tasks), strict=True):
            parts.setdefault(shard, []).append(task)
        packages: list[str] = []
        for shard in sorted(parts):
            packages += self.queues[shard].enqueue(parts[shard], package_size, allow_failure, chunk)
        return packages

    def placement(self, tasks: Sequence[Task]) -> list[int]:
        """The shard of each task: its component's, or its earlier prerequisites' shard."""
        here = {t.id for t in tasks}
        component = _Components(t.id for t in tasks)
        for t in tasks:
            for dep in t.depends_on:
                if dep in here:
                    component.join(t.id, dep)
        pinned: dict[str, set[int]] = {}  # component root -> shards of prerequisites enqueued earlier
        for t in tasks:
            earlier = [dep for dep in t.depends_on if dep not in here]
            if earlier:
                pinned.setdefault(component.root(t.id), set()).update(self.shard_holding(dep) for dep in earlier)
        shard_of_root: dict[str, int] = {}
        for root, members in component.groups().items():
            found = pinned.get(root, set())
            if len(found) > 1:
                raise CrossShardDependency(
                    f"tasks {', '.join(sorted(members)[:5])} depend on tasks on shards "
                    f"{', '.join(map(str, sorted(found)))} of queue {self.name!r}: a task and all it "
                    "depends on must be on one shard (enqueue them together, or use one shard)"
                )
            shard_of_root[root] = found.pop() if found else shard_of(min(members), self.shards)
        return [shard_of_root[component.root(t.id)] for t in tasks]

    def shard_holding(self, task_id: str) -> int:
        """The shard whose queue holds ``task_id``: where its id says, else wherever its hash is."""
        guess = shard_of(task_id, self.shards)
        order = [guess, *(i for i in range(self.shards) if i != guess)]
        for shard in order:
            q = self.queues[shard]
            if q.client.exists(q.keys.task(task_id)):
                return shard
        return guess  # unknown everywhere: Queue.enqueue names it (GraphError) on that shard

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
        for q in self.queues:
            q.purge()


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

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for task_id in self._parent:
            out.setdefault(self.root(task_id), []).append(task_id)
        return out
