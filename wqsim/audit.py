"""The audit: read a queue's Redis state and prove that nothing was lost or done twice.

It trusts no worker and no log line, and it must never report a loss that did
not happen while workers are running, so it reads Redis twice, each time atomically:

1. The headline counts come from one instant (lua/snapshot.lua): the counters
   total, done, dead, cancelled and waiting, and the ids in the ready list (work
   packages included), in the live claims and in the delayed set. Every script
   moves a task between these in one step, so at that instant
   total = done + dead + cancelled + queued + running + scheduled + waiting.
   The durable event stream is read only up to the snapshot's newest entry, so
   its completions describe the same instant: a task recorded done twice shows
   up there twice, and done = completions - duplicates.
2. Losses are verified before they are reported. A scan of the task hashes
   (not atomic: SCAN takes many calls, and tasks move meanwhile) only nominates
   suspects: a task whose status says it must be somewhere (queued -> the ready
   list or a work package in it, running -> a live claim, scheduled -> the
   delayed set, dead -> the dead-letter list) where the snapshot did not see
   it; an id in a structure or the event stream whose hash is gone; a waiting
   task whose prerequisites have all ended; an unknown status. One more atomic
   script (lua/verify.lua) re-checks every suspect at one instant, and only those
   still out of place are lost. A task in motion has settled somewhere by then;
   a real loss is a state that nothing will ever change, so it is still there.
   Fewer hashes than the snapshot's total means hashes were deleted: the
   shortfall is lost too (total is read before the scan, so tasks created
   meanwhile can only hide a shortfall, never fake one).

Retention (wqsim.retention) deletes the hashes of old done tasks on purpose: the
counter 'retired' counts them, and the shortfall is of hashes against
total - retired, with 'retired' read after the scan (it only grows, so tasks
retired during the scan can only hide a shortfall, never fake one). A retired
task cannot be told by id from one whose hash vanished, unless it is still in
the done index, so a missing hash named only by the event stream is counted by
the shortfall, not by id, once any task has been retired.

Never existed, or vanished? Redis can lose a queue's keys (eviction, a restart
without persistence; see wqsim.storage), the stats hash included, and then
'total' reads 0 as if the queue had never existed. So the audit takes the
largest of three records of how many tasks were created: the stats hash's
'total'; the ledger (Keys.ledger, a second key that every enqueue also counts
in, so it may survive the stats hash); and ``expected``, the count the
producing process remembers (wqsim.run passes it; ``wqsim status --expected``),
which survives even a server that restarted empty. A stats hash that is missing
while any record says tasks existed, or that lacks the sentinel 'created'
(recreated by a counter increment after the loss), sets ``counters_lost``: the
audit is then never clean, and every created task not found is lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis

from .keys import event_ids
from .queue import Queue
from .streams import entries
from .task import Status

# Where the snapshot must have seen a task of each status; None: nowhere in particular.
_HOME = {
    Status.QUEUED: "queued",
    Status.RUNNING: "running",
    Status.SCHEDULED: "scheduled",
    Status.DEAD: "dead",
    Status.DONE: None,
    Status.CANCELLED: None,
    Status.WAITING: None,
}
_TERMINAL = {s.value for s in Status if s.terminal}


@dataclass(frozen=True)
class Audit:
    """What the audit found. The counts are of one instant (the snapshot); ``lost``
    counts verified losses: ``lost_ids`` names them where an id is known (a hash
    deleted after its task finished may only show as a shortfall of hashes)."""

    generated: int  # tasks the queue has taken in (the 'total' counter)
    done: int
    dead: int
    cancelled: int
    queued: int
    running: int
    scheduled: int
    waiting: int
    lost: int
    completed_twice: int
    executions: int  # attempts claimed, summed over tasks
    completions: int  # done events in the stream
    rejected: int  # late outcomes refused because the lease had expired
    expired: int  # leases the reaper found expired
    retired: int = 0  # done tasks whose hashes the retention policy removed (counted in done)
    counters_lost: bool = False  # Redis lost the stats hash (missing, or recreated without its sentinel)
    vanished: int = 0  # ids claimed whose hash did not exist (deleted or evicted), dead-lettered (in dead)
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
        """Nothing lost, nothing completed twice, nothing left unfinished, the record intact."""
        return (
            self.lost == 0
            and self.completed_twice == 0
            and self.in_flight == 0
            and self.generated > 0
            and not self.counters_lost
        )

    @property
    def duplicate_executions(self) -> int:
        """Attempts beyond one per finished task: the price of at-least-once."""
        return max(self.executions - self.terminal, 0)

    def summary(self) -> str:
        retired = f" ({self.retired} retired)" if self.retired else ""
        hashless = f" ({self.vanished} of them had no hash)" if self.vanished else ""
        vanished = (
            "; the queue's counters were lost from Redis (stats hash missing or recreated)"
            if self.counters_lost
            else ""
        )
        return (
            f"generated {self.generated}, done {self.done}{retired}, dead {self.dead}{hashless}, "
            f"cancelled {self.cancelled}, "
            f"in flight {self.in_flight}, lost {self.lost}, completed twice {self.completed_twice}, "
            f"executions {self.executions} for {self.completions} completions{vanished}"
        )


def audit(client_or_queue: redis.Redis | Queue, queue: str | None = None, expected: int | None = None) -> Audit:
    """Audit one queue: ``audit(client, "seed")`` or ``audit(Queue(...))``.

    ``expected``: how many tasks the caller enqueued into the queue, if it knows;
    tasks it created that Redis no longer has any record of are then lost.
    """
    if isinstance(client_or_queue, Queue):
        q = client_or_queue
    else:
        if queue is None:
            raise ValueError("audit(client, queue): the queue name is required with a client")
        q = Queue(client_or_queue, queue)
    snap = q.snapshot()  # one atomic read: the headline counts
    c, ledger = snap["counters"], snap["ledger"]
    generated = max(c.get("total", 0), ledger.get("enqueued", 0), expected or 0)
    seen_in = {
        "queued": set(snap["queued"]),
        "running": set(snap["running"]),
        "scheduled": set(snap["scheduled"]),
        "dead": set(snap["dead"]),
    }

    # The event stream up to the snapshot's instant.
    done_events: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    named: set[str] = set()  # every task id the stream mentions: each had a hash
    for fields in _events_until(q, snap["last_event"]):
        ids = event_ids(fields.get("event", ""), fields.get("id", ""))
        counts[fields.get("event", "")] += len(ids)
        named.update(ids)
        if fields.get("event") == "done":
            done_events.update(ids)
    twice = {task_id for task_id, n in done_events.items() if n > 1}

    # The hashes, read after the snapshot: they nominate suspects, nothing more.
    suspects: dict[str, None] = {}  # ordered set
    status_of: dict[str, str | None] = {}
    waiting: dict[str, list[str]] = {}  # a waiting task's prerequisites
    executions = 0
    for key, (status, attempt, prereqs) in q.iter_task_hashes(("status", "attempt", "prereqs")):
        task_id = q.keys.task_id_of(key)
        if task_id in status_of:  # SCAN may return a key twice
            continue
        status_of[task_id] = status
        executions += (
            int(attempt) if attempt and attempt.isascii() and attempt.isdigit() else 0
        )  # a hand-written hash may hold anything
        try:
            st = Status(status) if status else Status.QUEUED  # no status: a hand-written hash, adoptable
        except ValueError:
            suspects[task_id] = None
            continue
        home = _HOME[st]
        if home is not None and task_id not in seen_in[home]:
            suspects[task_id] = None
        if st is Status.WAITING:
            waiting[task_id] = (prereqs or "").split()
    # A waiting task is stuck once none of its prerequisites can still finish.
    for task_id, needs in waiting.items():
        if all(status_of.get(p) in _TERMINAL for p in needs):
            suspects[task_id] = None
    # An id the snapshot or the stream knew of, whose hash the scan did not find.
    for task_id in set().union(*seen_in.values(), named) - status_of.keys():
        suspects[task_id] = None

    lost = q.verify_lost(list(suspects))  # one atomic re-check of every suspect
    hashless = sum(1 for task_id in lost if task_id not in status_of)
    retired = _retired(q)  # after the scan: see the module's docstring
    shortfall = max(generated - retired - len(status_of) - hashless, 0)  # deleted hashes no id names
    counters_lost = not c.get("created") and (bool(c) or generated > 0)

    running = seen_in["running"]
    dead = seen_in["dead"]
    scheduled = seen_in["scheduled"] - running - dead
    queued = seen_in["queued"] - running - scheduled - dead  # a stale duplicate entry counts once
    return Audit(
        generated=generated,
        done=c.get("done", 0),
        dead=c.get("dead", 0),
        cancelled=c.get("cancelled", 0),
        queued=len(queued),
        running=len(running),
        scheduled=len(scheduled),
        waiting=c.get("waiting", 0),
        lost=len(lost) + shortfall,
        completed_twice=len(twice),
        executions=executions + c.get("retired_attempts", 0),
        completions=counts["done"],
        rejected=counts["rejected"],
        expired=c.get("expired", 0),
        retired=max(c.get("retired", 0), ledger.get("retired", 0)),
        counters_lost=counters_lost,
        vanished=c.get("vanished", 0),
        lost_ids=tuple(sorted(lost, key=_id_order)),
        twice_ids=tuple(sorted(twice, key=_id_order)),
    )


def _retired(q: Queue) -> int:
    """Done tasks retired so far, by the stats hash or the ledger, whichever survived better."""
    pipe = q.client.pipeline(transaction=False)
    pipe.hget(q.keys.stats, "retired")
    pipe.hget(q.keys.ledger, "retired")
    return max(int(n or 0) for n in pipe.execute())


def _events_until(q: Queue, last: str) -> Iterator[dict[str, str]]:
    """The events stream's entries up to and including entry ``last``, oldest first."""
    if last:
        for _, fields in entries(q.reader, q.keys.events, end=last):
            yield fields


def _id_order(task_id: str) -> tuple[int, str]:
    return (int(task_id), "") if task_id.isdigit() else (1 << 62, task_id)
