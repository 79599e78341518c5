"""One worker's loop: claim, perform, settle-and-claim-next, and sleep only when idle.

A worker never crashes on a bad task: a malformed hash or unknown kind is
dead-lettered with a readable error, a handler exception is retried with
backoff. While tasks run, a watchdog thread renews the lease ("pings"); if
Redis reports the lease lost, the worker stops working on that claim and
records none of its results. The same thread enforces each task's time
limit: it records an attempt that ran too long as failed and, in a worker
process, ends the process (the pool starts a replacement). If Redis goes
away, the worker keeps its outcomes and retries the same fenced call after
reconnecting; if its lease expired meanwhile, the settle is rejected and the
reaper has returned those tasks.

With ``prefetch`` the loop is pipelined: the worker keeps requests in flight on
its private connection (see wqsim.transport.Pipelined) and, after each claim,
sends that claim's results together with a request for more, then goes on with
a claim it already holds while Redis answers. Replies are read in order, later.

Time: every time a worker records (an attempt's ``started_at`` and
``finished_at``, lease deadlines, retry due times) is its own clock corrected
by its offset to Redis's ``TIME`` (a wqsim.clocks.ServerClock, measured when
the worker starts and again after every reconnect), so they compare with the
``enqueued_at`` that Redis stamps, whatever the worker host's clock says.

Chaos (wqsim.chaos) wraps the handlers; the loop does not know of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import NamedTuple, NoReturn, TypeVar

import redis

from . import chaos as chaos_mod
from .acl import is_permission_error
from .clocks import ServerClock
from .config import ChaosConfig, WorkerConfig
from .handlers import HandlerRegistry, UnknownKind
from .handlers import registry as default_registry
from .keys import check_id, parse_lease
from .queue import Claim, Claimed, Clock, Queue, Settlement
from .storage import vanished_message
from .task import MalformedTask, Status, Task, inputs_of, parse_payload, to_json
from .transport import Ticket

log = logging.getLogger("wqsim.worker")

T = TypeVar("T")

CRASH_EXIT_CODE = 70
TIME_LIMIT_EXIT_CODE = 71  # a worker process ended because its task ran past its time limit
QUEUE_VANISHED_EXIT_CODE = 72  # a worker process stopped because its queue vanished from Redis
REDIS_GONE_EXIT_CODE = 73  # a worker process gave up on a Redis unreachable for longer than reconnect_s
RECORD_RETRY_S = 0.5  # while Redis is unreachable, how often the watchdog tries to record an overrun
FROZEN_POLL_S = 0.05  # how often a watchdog frozen by a chaos hang looks whether it has ended
RETRYABLE_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class RedisGone(RuntimeError):
    """Redis stayed unreachable for longer than ``reconnect_s``."""


class _Abandoned(Exception):
    """Chaos crash in thread mode: drop the claim without settling it."""


class _InHand(NamedTuple):
    """The attempt a worker is running, as its watchdog sees it."""

    task_id: str
    lease: str
    attempt: int
    limit_s: float
    deadline: float  # time.monotonic() when the limit runs out
    started_at: float  # the worker's clock, for the attempt's record


@dataclass
class WorkerStats:
    performed: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    rejected: int = 0
    abandoned: int = 0
    leases_lost: int = 0
    timed_out: int = 0
    heartbeats: int = 0  # heartbeats that reached Redis
    # The longest time a held lease went unrenewed: past the lease length, Redis expired it.
    # On a loaded host this shows whether the watchdog thread was starved of CPU.
    longest_renewal_gap_s: float = 0.0
    queue_vanished: bool = False  # stopped because the queue's keys disappeared from Redis


class Worker:
    """Takes tasks from one queue until it is drained (or forever, or until stopped)."""

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        worker_id: str,
        config: WorkerConfig | None = None,
        registry: HandlerRegistry | None = None,
        chaos: ChaosConfig | None = None,
        logger: logging.Logger | None = None,
        clock: Clock = time.time,
        in_own_process: bool = False,
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        self.client = client
        self._on_ready = on_ready  # called once run() is connected and about to look for work
        self.clock = ServerClock(clock)  # synced against Redis in run() and after every reconnect
        self.queue = Queue(client, queue, clock=self.clock, own_connection=True)
        # The watchdog thread's own view of the queue: the private connection above is the loop's alone.
        self._side = Queue(client, queue, clock=self.clock)
        self.id = check_id("worker id", worker_id)
        self.config = config or WorkerConfig()
        self.registry = registry or default_registry
        self.chaos = chaos or ChaosConfig()
        self.log = logger or log
        self.stats = WorkerStats()
        self._in_own_process = in_own_process
        self._chaos_effects = _ChaosEffects(self)  # what a fault does to this worker (see wqsim.chaos.wrap)
        self._handlers: dict[str, Callable[[Task], object]] = {}  # see _handler
        # A chaos crash or hang must strand only the task it was drawn for, so that one seed
        # injects the same faults on every run: no claims in reserve to take down with it.
        self._prefetch = 0 if (self.chaos.crash_p or self.chaos.hang_p) else self.config.prefetch
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._frozen = threading.Event()  # chaos hang: the whole worker, heartbeat included, stalls
        self._lock = threading.Lock()
        self._watch = threading.Condition(self._lock)  # wakes the watchdog for a sooner deadline, or to end
        self._in_hand: _InHand | None = None
        self._watch_until = float("inf")  # monotonic time the watchdog sleeps until
        self._timed_out: set[str] = set()  # tasks whose overrun the watchdog has recorded
        self._recording: str | None = None  # the task whose overrun the watchdog is recording now
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._attempts: dict[str, int] = {}  # attempt numbers of failed tasks, for the backoff
        self._flushes: list[Ticket[Claim]] = []  # tickets of mid-claim settles whose replies are not read yet
        self._ahead: deque[Ticket[Claim] | None] = deque()  # requests in flight whose replies hold the next tasks
        self._lease_floor = 0  # see run()
        self._renewed_at: float | None = None  # monotonic time leases held were last renewed (None: none held)
        self._refused: Exception | None = None  # a permission Redis refused the watchdog (see wqsim.acl)
        # Tasks of the last claim ran in under config.prefetch_below_s each (see _may_claim_ahead).
        self._short_tasks = False
        self._seen_queue = False  # Redis has shown this worker the queue exists (see _queue_vanished)
        self._orphan_scan: int | None = 0  # where _lost_before_start's SCAN is; None once a pass found nothing
        self._last_backlog = 0

    def stop(self) -> None:
        """Finish and settle the task(s) in hand, claim nothing more, then return."""
        self._stopping.set()

    def run(self) -> WorkerStats:
        cfg = self.config
        # Leases numbered above this are this worker's: an earlier worker of the same id
        # (one that crashed and was replaced) made only leases at or below it.
        self._with_redis(partial(self.clock.sync, self.client))
        self._lease_floor = self._with_redis(self.queue.leases_issued)
        threading.Thread(target=self._watchdog, name=f"wqsim-watchdog-{self.id}", daemon=True).start()
        if self._on_ready is not None:
            self._on_ready()
        try:
            claim = self._hold(self._with_redis(lambda: self.queue.claim(self.id, cfg.lease_ms, self._claim_size())))
            ahead = self._ahead
            while True:
                self._note_rejected(claim)
                if claim.tasks:
                    while (
                        len(ahead) < self._prefetch
                        and self._may_claim_ahead(claim, len(ahead))
                        and not self._stopping.is_set()
                    ):
                        ahead.append(self._send(lambda: self.queue.claim_nowait(self.id, cfg.lease_ms, cfg.batch_size)))
                    began = time.perf_counter()
                    settlements = self._work_on(claim)
                    self._short_tasks = (time.perf_counter() - began) / len(claim.tasks) < cfg.prefetch_below_s
                    if not ahead:
                        claim = self._hold(self._settle(settlements, claim_next=self._claim_size()))
                        continue
                    # Pipelined: take the reply to the oldest request, then hand Redis these
                    # results and the next request together, and work on while it answers.
                    claim = self._collect(ahead.popleft())
                    if self._may_claim_ahead(claim, len(ahead)):
                        ahead.append(self._send_results_and_ask_for_more(settlements))
                    elif settlements:
                        self._flush(settlements)  # results now; more is claimed once this worker is free
                    continue
                if ahead:
                    claim = self._collect(ahead.popleft())
                    continue
                if self._stopping.is_set() or (claim.drained and cfg.exit_when_drained):
                    break
                if self._queue_vanished(claim):
                    break
                claim = self._hold(self._with_redis(partial(self._wait_then_claim, claim.next_due)))
        finally:
            with self._watch:
                self._finished.set()  # ends the watchdog
                self._watch.notify()
            self.queue.close()
        if self._refused is not None:  # a configuration error: the caller reports it (see pool.py)
            raise self._refused
        self.log.info("Worker %s finished", self.id)
        self._with_redis(lambda: self.queue.finish(self.id))
        return self.stats

    def _send_results_and_ask_for_more(self, settlements: list[Settlement]) -> Ticket[Claim] | None:
        backoff_s = self._backoff_s(settlements)
        return self._send(
            lambda: self.queue.settle_nowait(self.id, settlements, self.config.lease_ms, self._claim_size(), backoff_s)
        )

    def _wait_then_claim(self, next_due: float | None) -> Claim:
        """Sleep until woken by a signal, a retry falls due, or idle_wait_s passes; then claim."""
        wait_s = self.config.idle_wait_s
        if next_due is not None:
            wait_s = min(wait_s, max(next_due - self.clock(), 0.001))
        return self.queue.wait_then_claim(self.id, wait_s, self.config.lease_ms, self._claim_size())

    def _may_claim_ahead(self, claim: Claim, requests_ahead: int) -> bool:
        """Claim ahead (prefetch) when it cannot starve another worker, or cannot matter.

        Tasks held in reserve are tasks an idle worker cannot start. That is
        harmless while the backlog outnumbers the claims in flight (no worker
        will go idle for want of them), and costs little when tasks are short
        (config.prefetch_below_s): there the saved round trip is what counts.
        With no backlog at all there is nothing to claim ahead.
        ``claim`` is the latest reply; ``requests_ahead`` were sent after it.
        """
        left = claim.backlog - requests_ahead * self.config.batch_size
        if left <= 0:
            return False  # nothing to claim: a request ahead would only delay the task in hand
        return self._short_tasks or left > claim.claims_in_flight + requests_ahead

    def _claim_size(self) -> int:
        return 0 if self._stopping.is_set() else self.config.batch_size

    def _hold(self, claim: Claim) -> Claim:
        """From now on the heartbeat renews this claim's lease (until its tasks are settled)."""
        if claim.lease is not None:
            self._seen_queue = True
            with self._lock:
                self._held.add(claim.lease)
                if self._renewed_at is None:
                    self._renewed_at = time.monotonic()
        self._last_backlog = claim.backlog
        return claim

    def _queue_vanished(self, claim: Claim) -> bool:
        """Has the queue vanished from Redis? If so, say so once (the loop then stops).

        Claim replies with nothing in them say whether the stats hash is still there
        (Claim.state, no extra round trip). 'lost' and 'stranded' are always a loss;
        'missing' is one only after this worker has seen the queue exist, else it is
        simply not created yet and the worker waits for a producer. Only here, once, is Redis asked how
        many tasks went: the ledger, if it survived, else what this worker saw.
        """
        if claim.state == "ok":
            self._seen_queue = True
            return False
        if claim.state == "missing" and not self._seen_queue and not self._lost_before_start():
            return False
        seen = self.stats.performed + self._last_backlog  # their records are gone too
        lost, exact = seen, False
        try:
            enqueued, counters = self._side.ledger_enqueued(), self._side.counters()
        except RETRYABLE_REDIS_ERRORS:
            enqueued, counters = 0, {}
        if enqueued:
            finished = sum(counters.get(name, 0) for name in ("done", "dead", "cancelled"))
            lost, exact = max(enqueued - finished, seen), True
        if claim.state == "stranded":
            how = "its unfinished tasks are in no list, claim or retry schedule: their entries were lost"
            lost, exact = (
                counters.get("total", 0) - sum(counters.get(n, 0) for n in ("done", "dead", "cancelled")),
                True,
            )
        elif counters:
            how = "its stats hash was recreated after Redis lost it"
        else:
            how = "its stats hash is gone"
        self.log.error("Worker %s: %s", self.id, vanished_message(self.queue.name, lost, how, exact))
        self.stats.queue_vanished = True
        return True

    def _lost_before_start(self) -> bool:
        """No stats hash, and this worker has never seen one: not created yet, or lost before it started?

        A producer writes a queue's stats hash and its tasks' hashes in one script, so task
        hashes without a stats hash mean it was lost (evicted, deleted). They are looked for
        one SCAN step per idle round (a large keyspace costs rounds, not one long call), until
        one full pass has found none: then the queue is one to wait for. A task hash found while
        the stats hash exists again is a producer creating the queue just now.
        """
        if self._orphan_scan is None:
            return False
        try:
            cursor, found = self._side.scan_task_keys(self._orphan_scan)
            if found and not self._side.has_stats():
                return True
        except RETRYABLE_REDIS_ERRORS:
            return False  # asked again at the next round
        self._orphan_scan = cursor or None
        return False

    def _send(self, request: Callable[[], Ticket[Claim]]) -> Ticket[Claim] | None:
        """Send a pipelined request; None if Redis is unreachable (the loop then claims afresh)."""
        try:
            return request()
        except RETRYABLE_REDIS_ERRORS as exc:
            self.log.warning(
                "Worker %s: Redis unreachable (%s); results in flight are left to the reaper", self.id, exc
            )
            return None

    def _collect(self, ticket: Ticket[Claim] | None) -> Claim:
        """The reply to a pipelined request, with the rejections of earlier flushes folded in."""
        if ticket is None:
            return Claim()
        try:
            claim = self.queue.result(ticket)
        except RETRYABLE_REDIS_ERRORS as exc:
            self.log.warning(
                "Worker %s: Redis unreachable (%s); results in flight are left to the reaper", self.id, exc
            )
            self._flushes.clear()
            return Claim()
        return self._hold(self._with_flush_rejections(claim))

    def _work_on(self, claim: Claim) -> list[Settlement]:
        """Perform a claim's tasks; return the outcomes not yet sent to Redis.

        Finished tasks are sent at most every flush_interval_s without waiting
        for the reply, so a worker that dies mid-package loses only its
        unfinished tasks, and Redis records them while the next task runs.
        """
        lease = claim.lease
        assert lease is not None
        pending: list[Settlement] = []
        flushed_at = time.monotonic()
        package, size, limit = parse_lease(lease)[2], len(claim.tasks), self.config.limits.max_package_size
        if package and size > limit:  # a package written by hand: refuse it whole, decoding none of it
            started_at = self.clock()
            reason = f"package {package}: {size:,} tasks, over the limit of {limit:,} (Limits.max_package_size)"
            self.stats.dead += size
            self.log.error("Worker %s refuses %s", self.id, reason)
            with self._lock:
                self._held.discard(lease)
            return [Settlement(c.id, lease, "dead", reason, started_at, started_at) for c in claim.tasks]
        try:
            for i, claimed in enumerate(claim.tasks):
                if lease in self._lost:
                    break
                if self._stopping.is_set():  # hand back what was never started
                    pending += [Settlement(c.id, lease, "release", "") for c in claim.tasks[i:]]
                    break
                outcome = self.perform(claimed, lease)
                if outcome is not None:
                    pending.append(outcome)
                if time.monotonic() - flushed_at >= self.config.flush_interval_s and claimed is not claim.tasks[-1]:
                    self._flush(pending)
                    pending = []
                    flushed_at = time.monotonic()
        except _Abandoned:
            self.stats.abandoned += 1
            pending = []
        finally:
            with self._lock:
                self._held.discard(lease)
        if lease in self._lost:
            with self._lock:
                self._lost.discard(lease)
            self.stats.leases_lost += 1
            self.log.warning(
                "Worker %s lost lease %s; dropping %d unrecorded result(s), the reaper returns its tasks",
                self.id,
                lease,
                len(pending),
            )
            pending = []
        return pending

    def _flush(self, settlements: list[Settlement]) -> None:
        """Send finished tasks' outcomes without waiting; the reply is checked later."""
        backoff_s = self._backoff_s(settlements)
        ticket = self._send(lambda: self.queue.settle_nowait(self.id, settlements, self.config.lease_ms, 0, backoff_s))
        if ticket is not None:
            self._flushes.append(ticket)

    def _backoff_s(self, settlements: list[Settlement]) -> float:
        retries = [s for s in settlements if s.outcome == "retry"]
        backoff_s = self.config.backoff_for(max(self._attempts[s.task_id] for s in retries)) if retries else 0.0
        for s in settlements:
            self._attempts.pop(s.task_id, None)
        return backoff_s

    def _settle(self, settlements: list[Settlement], claim_next: int) -> Claim:
        backoff_s = self._backoff_s(settlements)
        claim = self._with_redis(
            lambda: self.queue.settle(self.id, settlements, self.config.lease_ms, claim_next, backoff_s)
        )
        return self._with_flush_rejections(claim)

    def _with_flush_rejections(self, claim: Claim) -> Claim:
        """Fold in the rejections of flushes whose replies have been read by now."""
        late: list[str] = []
        for ticket in self._flushes:
            # A reply lost with the connection: those tasks' leases expire and the reaper returns them.
            with contextlib.suppress(*RETRYABLE_REDIS_ERRORS):
                late += self.queue.result(ticket).rejected
        self._flushes.clear()
        return replace(claim, rejected=late + claim.rejected) if late else claim

    def _note_rejected(self, claim: Claim) -> None:
        if claim.rejected:
            self.stats.rejected += len(claim.rejected)
            self.log.warning(
                "Worker %s: late result(s) for task(s) %s rejected; the lease had expired",
                self.id,
                ", ".join(claim.rejected),
            )

    def perform(self, claimed: Claimed, lease: str) -> Settlement | None:
        """Run one claimed task and say how it ended. Never raises for bad tasks.

        None: the task ran past its time limit, and the watchdog has recorded that already.
        """
        self.stats.performed += 1
        started_at = self.clock()
        try:
            task = self._decode(claimed, lease, started_at)
            handler = self._handler(task.kind)
        except (MalformedTask, UnknownKind) as exc:
            return self._refuse(claimed.id, lease, str(exc), started_at)
        except Exception as exc:  # whatever a hostile hash provokes, it costs the task, never the worker
            return self._refuse(
                claimed.id,
                lease,
                f"task {claimed.id} cannot be decoded: {type(exc).__name__}: {str(exc)[:200]}",
                started_at,
            )
        self.log.info("Worker %s picked up task %s", self.id, task.id)
        limit_s = claimed.timeout_s or self.registry.time_limit(task.kind) or self.config.task_timeout_s
        if limit_s is not None:
            self._watch_over(_InHand(task.id, lease, task.attempt, limit_s, time.monotonic() + limit_s, started_at))
        result: object = None
        failure: Exception | None = None
        try:
            result = handler(task)
        except _Abandoned:
            raise
        except Exception as exc:  # a failing handler must never take the worker down
            failure = exc
        finally:
            overran = limit_s is not None and self._end_watch(task.id)
        if overran:
            return None  # the watchdog recorded this attempt as failed when its limit ran out
        if failure is not None:
            self.stats.failed += 1
            self._attempts[task.id] = task.attempt
            message = f"{type(failure).__name__}: {failure}"
            self.log.warning("Worker %s: task %s attempt %d failed: %s", self.id, task.id, task.attempt, message)
            return Settlement(task.id, lease, "retry", message, started_at, self.clock())
        finished_at = self.clock()
        try:
            result_json = "null" if result is None else to_json(result)
        except (TypeError, ValueError) as exc:
            self.stats.dead += 1
            message = f"result of task {task.id} is not JSON-serialisable: {exc}"
            self.log.error("Worker %s: %s", self.id, message)
            return Settlement(task.id, lease, "dead", message, started_at, finished_at)
        self.stats.done += 1
        return Settlement(task.id, lease, "done", result_json, started_at, finished_at)

    def _handler(self, kind: str) -> Callable[[Task], object]:
        """The registry's handler for ``kind`` with chaos wrapped around it, made once per kind."""
        handler = self._handlers.get(kind)
        if handler is None:
            handler = self._handlers[kind] = chaos_mod.wrap(self.registry.get(kind), self.chaos, self._chaos_effects)
        return handler

    def _decode(self, claimed: Claimed, lease: str, started_at: float) -> Task:
        """The claimed task as a Task, read within config.limits; MalformedTask names what is wrong."""
        limits = self.config.limits
        kind = claimed.kind
        missing = [name for name, value in (("kind", kind), ("payload", claimed.payload)) if value is None]
        if missing or kind is None:
            raise MalformedTask(f"task {claimed.id} is missing field(s): {', '.join(missing)}")
        payload = parse_payload(claimed.id, claimed.payload, limits)
        task = Task(
            id=claimed.id,
            kind=kind,
            payload=payload,
            status=Status.RUNNING,
            attempt=claimed.attempt,
            worker=self.id,
            lease=lease,
            started_at=started_at,
        )
        if claimed.inputs:
            task.depends_on, task.inputs, task.input_errors = inputs_of(list(claimed.inputs), limits, claimed.id)
        return task

    def _refuse(self, task_id: str, lease: str, reason: str, started_at: float) -> Settlement:
        """Dead-letter a task that cannot be run, with the reason; the worker carries on."""
        self.stats.dead += 1
        self.log.error("Worker %s cannot run task %s: %s", self.id, task_id, reason)
        return Settlement(task_id, lease, "dead", reason, started_at, self.clock())

    # -- the watchdog thread: heartbeats and time limits ------------------------------
    def _watch_over(self, in_hand: _InHand) -> None:
        """Tell the watchdog which attempt runs now; wake it if this one's deadline comes first."""
        # self._lock is self._watch's lock: taken directly, it costs no Python-level __enter__ (once per task).
        with self._lock:
            self._in_hand = in_hand
            if in_hand.deadline < self._watch_until:
                self._watch.notify()

    def _end_watch(self, task_id: str) -> bool:
        """The attempt has returned; True if it had already run past its limit (and was recorded so).

        If the watchdog is recording the overrun at this moment, wait for it: Redis may already
        hold the record, and a result sent now would only be rejected as late.
        """
        with self._lock:
            while self._recording == task_id:
                self._watch.wait()
            self._in_hand = None
            if task_id in self._timed_out:
                self._timed_out.discard(task_id)
                return True
            return False

    def _watchdog(self) -> None:
        """Renew this worker's leases every ping interval, and end an attempt that runs past its limit.

        A heartbeat renews claims made ahead too, though their replies (and so
        their lease ids) are unread: Redis finds them by this worker's id. A
        chaos hang freezes this thread along with the worker, as a real stall would.
        """
        every_s = self.config.ping_every_s if self.config.heartbeat else float("inf")
        next_ping = time.monotonic() + every_s
        while True:
            with self._watch:
                in_hand = self._in_hand
                wake_at = min(next_ping, in_hand.deadline if in_hand is not None else next_ping)
                self._watch_until = wake_at
                if not self._finished.is_set():
                    self._watch.wait(max(wake_at - time.monotonic(), 0.0) if wake_at != float("inf") else None)
                in_hand = self._in_hand
            if self._finished.is_set():
                return
            if self._frozen.is_set():
                self._finished.wait(FROZEN_POLL_S)
                continue
            now = time.monotonic()
            try:
                if in_hand is not None and now >= in_hand.deadline:
                    self._enforce_time_limit(in_hand)
                if now >= next_ping:
                    next_ping = now + every_s
                    self._ping()
            except redis.ResponseError as exc:
                if not is_permission_error(exc):
                    raise
                self._refused = exc  # retrying cannot help: stop gracefully, and run() raises it
                self.stop()
                return

    def _ping(self) -> None:
        """One heartbeat: renew the leases held (and those claimed ahead); mark the ones Redis says are lost."""
        with self._lock:
            leases = list(self._held)
            if not leases:
                self._renewed_at = None
        if not (leases or self._ahead):
            return
        try:
            lost = self._side.heartbeat(leases, self.config.lease_ms, self.id, self._lease_floor)
        except RETRYABLE_REDIS_ERRORS as exc:
            self.log.warning("Worker %s: heartbeat failed (%s)", self.id, exc)
            return
        self._note_renewal()
        if lost:
            with self._lock:
                self._lost.update(lost)
            self.log.warning("Worker %s: lease(s) %s lost", self.id, ", ".join(lost))

    def _note_renewal(self) -> None:
        now = time.monotonic()
        self.stats.heartbeats += 1
        with self._lock:
            if self._renewed_at is not None:
                gap = now - self._renewed_at
                self.stats.longest_renewal_gap_s = max(self.stats.longest_renewal_gap_s, gap)
                if gap * 1000 > self.config.lease_ms:
                    self.log.warning(
                        "Worker %s: %.3f s between lease renewals, longer than the %.3f s lease",
                        self.id,
                        gap,
                        self.config.lease_ms / 1000,
                    )
            self._renewed_at = now if self._held else None

    def _enforce_time_limit(self, in_hand: _InHand) -> None:
        """Record an attempt that ran past its limit as failed; in a worker process, end the process.

        The record is an ordinary failed attempt, fenced by the lease like any
        other, so the task is retried with backoff or dead-lettered as usual.
        A worker process cannot get its thread back from a handler that will
        not return, so it hands its other claims to the reaper at once and
        exits; the pool starts a replacement. A thread cannot be stopped: in
        thread mode the attempt is only recorded, and the loop ignores what
        the handler eventually returns.
        """
        message = (
            f"TimeLimitExceeded: task {in_hand.task_id} ran past its time limit of {in_hand.limit_s:g} s "
            f"(attempt {in_hand.attempt})"
        )
        with self._watch:
            if self._in_hand is not in_hand:
                return  # it returned meanwhile
            self._recording = in_hand.task_id  # until recorded, the loop waits rather than settle it too
        try:
            outcome = Settlement(in_hand.task_id, in_hand.lease, "retry", message, in_hand.started_at, self.clock())
            backoff_s = self.config.backoff_for(in_hand.attempt)
            try:
                rejected = self._side.settle(self.id, [outcome], self.config.lease_ms, 0, backoff_s).rejected
            except RETRYABLE_REDIS_ERRORS as exc:
                if not self._in_own_process:
                    self.log.warning(
                        "Worker %s: cannot record task %s's overrun yet (%s)", self.id, in_hand.task_id, exc
                    )
                    with self._watch:  # try again shortly; until then the loop has not settled it either
                        if self._in_hand is in_hand:
                            self._in_hand = in_hand._replace(deadline=time.monotonic() + RECORD_RETRY_S)
                    return
                rejected = [in_hand.task_id]  # its lease expires with this process, and the reaper returns it
            with self._watch:
                if self._in_hand is in_hand:
                    self._timed_out.add(in_hand.task_id)
                    self._in_hand = in_hand._replace(deadline=float("inf"))  # recorded: not again
        finally:
            with self._watch:
                self._recording = None
                self._watch.notify_all()
        self.stats.timed_out += 1
        recorded = "already settled or reaped" if rejected else "recorded as a failed attempt"
        if not self._in_own_process:
            self.log.error(
                "Worker %s: %s; %s. The thread runs on until the handler returns; its result will be ignored",
                self.id,
                message,
                recorded,
            )
            return
        self.log.error("Worker %s: %s; %s. Ending the worker process", self.id, message, recorded)
        try:
            with self._lock:
                mine = self._held | {in_hand.lease}
            self._side.expire_leases(self._side.leases_of(self.id, self._lease_floor) | mine)
            self._side.reap()
        except RETRYABLE_REDIS_ERRORS:
            pass  # they expire on their own, a lease from now
        os._exit(TIME_LIMIT_EXIT_CODE)

    def _with_redis(self, call: Callable[[], T]) -> T:
        """Run ``call``; while Redis is unreachable, retry with capped exponential backoff.

        The one place a worker waits for Redis to come back. After a reconnect
        the clock offset is measured again: the server may have restarted on
        another host.
        """
        delay_s = 0.05
        deadline = time.monotonic() + self.config.reconnect_s
        while True:
            try:
                result = call()
            except RETRYABLE_REDIS_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise RedisGone(
                        f"worker {self.id}: Redis unreachable for {self.config.reconnect_s:g} s: {exc}"
                    ) from exc
                self.log.warning("Worker %s: Redis unreachable (%s); retrying in %.2f s", self.id, exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
                continue
            if delay_s > 0.05:  # it had failed: Redis is back
                with contextlib.suppress(*RETRYABLE_REDIS_ERRORS):
                    self.clock.sync(self.client)
            return result


class _ChaosEffects:
    """What an injected fault does to a Worker (see wqsim.chaos.Effects)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def record(self, task: Task, faults: chaos_mod.Faults) -> None:
        w = self.worker
        w._with_redis(lambda: w._side.record_fault(task.id, task.attempt, w.id, faults.names()))

    def crash(self, task: Task) -> NoReturn:
        w = self.worker
        if w._in_own_process:
            w.log.warning("Worker %s crashes (chaos) while holding task %s", w.id, task.id)
            os._exit(CRASH_EXIT_CODE)
        # A thread cannot die, so it drops the claim and ends its lease as a dead process's would run out.
        w.log.warning("Worker %s abandons its claim at task %s (chaos crash)", w.id, task.id)
        w._with_redis(lambda: w._side.expire_leases([task.lease]))
        raise _Abandoned

    @contextlib.contextmanager
    def frozen(self, task: Task) -> Iterator[None]:
        w = self.worker
        w.log.warning("Worker %s hangs on task %s for %.2f s (chaos)", w.id, task.id, w.chaos.hang_s)
        w._frozen.set()
        try:
            yield
        finally:
            w._frozen.clear()
