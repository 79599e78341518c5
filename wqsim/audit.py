"""The audit: read a queue's Redis state and prove that nothing was lost or done twice.

It trusts no worker and no log line. Every task hash is checked against the
structure its status says it must be in (queued -> the ready list or a work
package in it, running -> a live claim, scheduled -> the delayed set, dead ->
the dead-letter list, waiting -> some prerequisite not yet finished), and the
durable event stream is counted independently
of the hashes: a task recorded done twice would show up there twice.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import redis

from .queue import Queue
from .task import Status

# Where a task of each non-terminal status must be found; None: nowhere in particular.
_HOME = {
    Status.QUEUED: "queued",
    Status.RUNNING: "running",
    Status.SCHEDULED: "scheduled",
    Status.DEAD: "dead",
    Status.DONE: None,
    Status.CANCELLED: None,
    Status.WAITING: None,
}


@dataclass(frozen=True)
class Audit:
    generated: int
    done: int
    dead: int
    cancelled: int
    queued: int
    running: int
    scheduled: int
    waiting: int
    lost: int
    completed_twice: int
    executions: int      # attempts claimed, summed over tasks
    completions: int     # done events in the stream
    rejected: int        # late outcomes refused because the lease had expired
    expired: int         # leases the reaper found expired
    lost_ids: tuple[str, ...] = field(default=(), repr=False)
    twice_ids: tuple[str, ...] = field(default=(), repr=False)

    @property
    def terminal(self) -> int:
        return self.done + self.dead + self.cancelled

    @property
    def in_flight(self) -> int:
        return self.queued + self.running + self.scheduled + self.waiting

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing completed twice, nothing left unfinished."""
        return self.lost == 0 and self.completed_twice == 0 and self.in_flight == 0 and self.generated > 0

    @property
    def duplicate_executions(self) -> int:
        """Attempts beyond one per finished task: the price of at-least-once."""
        return max(self.executions - self.terminal, 0)

    def summary(self) -> str:
        return (
            f"generated {self.generated}, done {self.done}, dead {self.dead}, cancelled {self.cancelled}, "
            f"in flight {self.in_flight}, lost {self.lost}, completed twice {self.completed_twice}, "
            f"executions {self.executions} for {self.completions} completions"
        )


def audit(client_or_queue: redis.Redis | Queue, queue: str | None = None) -> Audit:
    """Audit one queue: ``audit(client, "seed")`` or ``audit(Queue(...))``."""
    if isinstance(client_or_queue, Queue):
        q = client_or_queue
    else:
        if queue is None:
            raise ValueError("audit(client, queue): the queue name is required with a client")
        q = Queue(client_or_queue, queue)
    k = q.keys
    homes = {name: set(ids) for name, ids in q.snapshot().items()}  # one atomic read

    statuses: Counter[Status] = Counter()
    lost: list[str] = []
    unknown = 0
    twice: set[str] = set()
    executions = 0
    status_of: dict[str, Status] = {}
    waiting: dict[str, list[str]] = {}  # a waiting task's prerequisites
    for key, (status, attempt, prereqs) in q.iter_task_hashes(("status", "attempt", "prereqs")):
        task_id = k.task_id_of(key)
        executions += int(attempt or 0)
        try:
            st = Status(status) if status else Status.QUEUED
        except ValueError:
            lost.append(task_id)
            unknown += 1
            continue
        statuses[st] += 1
        status_of[task_id] = st
        home = _HOME[st]
        if home is not None and task_id not in homes[home]:
            lost.append(task_id)
        if st is Status.WAITING:
            waiting[task_id] = (prereqs or "").split()
    # A waiting task is stuck (lost) once none of its prerequisites can still finish.
    for task_id, prereqs in waiting.items():
        if all(p in status_of and status_of[p].terminal for p in prereqs):
            lost.append(task_id)

    done_events: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for _, fields in q.client.xrange(k.events):
        ids = fields["id"].split(" ")  # a 'done' entry lists every task one settle call finished
        counts[fields["event"]] += len(ids)
        if fields["event"] == "done":
            done_events.update(ids)
    twice.update(task_id for task_id, n in done_events.items() if n > 1)

    return Audit(
        generated=sum(statuses.values()) + unknown,
        done=statuses[Status.DONE],
        dead=statuses[Status.DEAD],
        cancelled=statuses[Status.CANCELLED],
        queued=statuses[Status.QUEUED],
        running=statuses[Status.RUNNING],
        scheduled=statuses[Status.SCHEDULED],
        waiting=statuses[Status.WAITING],
        lost=len(lost),
        completed_twice=len(twice),
        executions=executions,
        completions=counts["done"],
        rejected=counts["rejected"],
        expired=q.counters().get("expired", 0),
        lost_ids=tuple(sorted(lost, key=_id_order)),
        twice_ids=tuple(sorted(twice, key=_id_order)),
    )


def _id_order(task_id: str) -> tuple[int, str]:
    return (int(task_id), "") if task_id.isdigit() else (1 << 62, task_id)
