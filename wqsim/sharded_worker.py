"""A worker of a sharded queue: one ordinary Worker loop per shard, running one task at a time.

Each shard is a whole queue on its own node (see :mod:`wqsim.shards`), and a
worker's loop blocks on one queue's wake-up list: a loop serving several shards
in turn would sleep on an empty shard while another filled up. So a sharded
worker runs one :class:`~wqsim.worker.Worker` loop per shard, each in a thread,
each blocked on its own shard: whichever shard gets work wakes its loop at once,
no shard is left without a loop in any worker (none starves), and every lease,
heartbeat and fencing rule is the single-queue loop's, unchanged.

What makes them one worker is a lock around the handlers: the loops claim
independently, but only one task runs at a time, as in a one-queue worker. A
loop whose claim arrives while another loop's task runs holds its task, under a
lease its heartbeat renews, until the lock is free: a claim made ahead, which is
why the loops claim nothing further ahead (prefetch 0). The time a task waits
for the lock counts as its run time (and against its time limit): on a worker
that is busy on every shard, the wait is at most one task of another shard.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import fields, replace

from .config import ChaosConfig, WorkerConfig
from .connection import connect
from .handlers import Handler, HandlerRegistry
from .handlers import registry as default_registry
from .shards import shard_names
from .task import Task
from .worker import RedisGone, Worker, WorkerStats

log = logging.getLogger("wqsim.worker")


class OneAtATime(HandlerRegistry):
    """A registry whose handlers take one lock while they run: the loops of one worker share it."""

    def __init__(self, registry: HandlerRegistry) -> None:
        super().__init__()
        self._inner = registry
        self._lock = threading.Lock()

    def get(self, kind: str) -> Handler:
        handler = self._inner.get(kind)

        def exclusive(task: Task) -> object:
            with self._lock:
                return handler(task)

        return exclusive

    def time_limit(self, kind: str) -> float | None:
        return self._inner.time_limit(kind)

    def kinds(self) -> list[str]:
        return self._inner.kinds()


class ShardedWorker:
    """Serves every shard of ``queue`` as worker ``worker_id``; ``run()`` returns when every loop has."""

    def __init__(
        self,
        url: str,
        queue: str,
        shards: int,
        worker_id: str,
        config: WorkerConfig | None = None,
        registry: HandlerRegistry | None = None,
        chaos: ChaosConfig | None = None,
        logger: logging.Logger | None = None,
        in_own_process: bool = False,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        self.id = worker_id
        self.log = logger or log
        self.lost: dict[str, str] = {}  # shard -> why its loop gave up on Redis
        self._on_ready = on_ready
        self._ready_count = 0
        self._ready_lock = threading.Lock()
        config = replace(config or WorkerConfig(), prefetch=0)
        one_at_a_time = OneAtATime(registry or default_registry)
        self.loops = [
            Worker(
                connect(url, queue=name),
                name,
                worker_id,
                config,
                registry=one_at_a_time,
                chaos=chaos,
                logger=self.log,
                in_own_process=in_own_process,
                on_ready=self._loop_ready,
            )
            for name in shard_names(queue, shards)
        ]

    def _loop_ready(self) -> None:
        with self._ready_lock:
            self._ready_count += 1
            all_ready = self._ready_count == len(self.loops)
        if all_ready and self._on_ready is not None:
            self._on_ready()

    @property
    def stats(self) -> WorkerStats:
        """Every loop's stats added up, so far."""
        return _sum([loop.stats for loop in self.loops])

    def stop(self) -> None:
        for loop in self.loops:
            loop.stop()

    def run(self) -> WorkerStats:
        """Run every shard's loop in a thread; the first error (a refused permission) is raised.

        A shard whose Redis stays unreachable (``reconnect_s``) ends its own loop only; once the
        others are done, RedisGone names the lost shards.
        """
        errors: list[BaseException] = []

        def serve(loop: Worker) -> None:
            try:
                loop.run()
            except RedisGone as exc:
                # One shard's node is gone (a master lost without a replica): its tasks wait for it,
                # and this worker goes on serving the shards that are still there.
                self.lost[loop.queue.name] = str(exc)
                self.log.error("Worker %s: shard %s lost: %s; serving the other shards", self.id, loop.queue.name, exc)
            except BaseException as exc:  # a refused permission and the like: re-raised below
                errors.append(exc)
                self.stop()

        threads = [
            threading.Thread(target=serve, args=(loop,), name=f"wqsim-{self.id}-{loop.queue.name}")
            for loop in self.loops
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        if self.lost:
            raise RedisGone(f"worker {self.id}: shard(s) {', '.join(sorted(self.lost))} unreachable; the others served")
        return self.stats


def _sum(stats: list[WorkerStats]) -> WorkerStats:
    """The loops' stats added up (the longest renewal gap is the longest of any loop)."""
    total = WorkerStats()
    for s in stats:
        for f in fields(WorkerStats):
            mine, theirs = getattr(total, f.name), getattr(s, f.name)
            if f.name == "longest_renewal_gap_s":
                setattr(total, f.name, max(mine, theirs))
            elif isinstance(mine, bool):
                setattr(total, f.name, mine or theirs)
            else:
                setattr(total, f.name, mine + theirs)
    return total
