"""One worker's loop: claim, perform, settle-and-claim-next, and sleep only when idle.

A worker never crashes on a bad task: a malformed hash or unknown kind is
dead-lettered with a readable error, a handler exception is retried with
backoff. While tasks run, a heartbeat thread renews the lease ("pings"); if
Redis reports the lease lost, the worker stops working on that claim and
records none of its results. If Redis goes away, the worker keeps its outcomes
and retries the same fenced call after reconnecting; if its lease expired
meanwhile, the settle is rejected and the reaper has returned those tasks.

With ``prefetch`` the loop is pipelined: the worker keeps requests in flight on
its private connection (see queue._OwnConnection) and, after each claim, sends
that claim's results together with a request for more, then goes on with a
claim it already holds while Redis answers. Replies are read in order, later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import redis

from . import chaos as chaos_mod
from .config import ChaosConfig, WorkerConfig
from .handlers import HandlerRegistry, UnknownKind
from .handlers import registry as default_registry
from .keys import check_id
from .queue import Claim, Claimed, Clock, Queue, Settlement
from .task import MalformedTask, Status, Task, inputs_of, parse_payload, to_json

log = logging.getLogger("wqsim.worker")

T = TypeVar("T")

CRASH_EXIT_CODE = 70
RETRYABLE_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class RedisGone(RuntimeError):
    """Redis stayed unreachable for longer than ``reconnect_s``."""


class _Abandoned(Exception):
    """Chaos crash in thread mode: drop the claim without settling it."""


@dataclass
class WorkerStats:
    performed: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    rejected: int = 0
    abandoned: int = 0
    leases_lost: int = 0


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
    ) -> None:
        self.queue = Queue(client, queue, clock=clock, own_connection=True)
        self.id = check_id("worker id", worker_id)
        self.config = config or WorkerConfig()
        self.registry = registry or default_registry
        self.chaos = chaos or ChaosConfig()
        self.log = logger or log
        self.clock = clock
        self.stats = WorkerStats()
        self._in_own_process = in_own_process
        self._chaos_active = self.chaos.active
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._frozen = threading.Event()  # chaos hang: the whole worker, heartbeat included, stalls
        self._lock = threading.Lock()
        self._held: set[str] = set()
        self._lost: set[str] = set()
        self._attempts: dict[str, int] = {}  # attempt numbers of failed tasks, for the backoff
        self._flushes: list[int] = []  # tickets of mid-claim settles whose replies are not read yet
        self._ahead: deque[int | None] = deque()  # requests in flight whose replies hold the next tasks
        self._lease_floor = 0  # see run()
        # Tasks of the last claim ran in under config.prefetch_below_s each (see _may_claim_ahead).
        self._short_tasks = False

    def stop(self) -> None:
        """Finish and settle the task(s) in hand, claim nothing more, then return."""
        self._stopping.set()

    def run(self) -> WorkerStats:
        cfg = self.config
        # Leases numbered above this are this worker's: an earlier worker of the same id
        # (one that crashed and was replaced) made only leases at or below it.
        self._lease_floor = self._with_redis(self.queue.leases_issued)
        if cfg.heartbeat:
            threading.Thread(target=self._ping_loop, name=f"wqsim-ping-{self.id}", daemon=True).start()
        try:
            claim = self._hold(self._with_redis(lambda: self.queue.claim(self.id, cfg.lease_ms, self._claim_size())))
            ahead = self._ahead
            while True:
                self._note_rejected(claim)
                if claim.tasks:
                    while len(ahead) < cfg.prefetch and self._may_claim_ahead(claim, len(ahead)) and not self._stopping.is_set():
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
                claim = self._hold(self._with_redis(partial(self._wait_then_claim, claim.next_due)))
        finally:
            self._finished.set()  # ends the ping loop
            self.queue.close()
        self.log.info("Worker %s finished", self.id)
        self._with_redis(lambda: self.queue.finish(self.id))
        return self.stats

    def _send_results_and_ask_for_more(self, settlements: list[Settlement]) -> int | None:
        backoff_s = self._backoff_s(settlements)
        return self._send(lambda: self.queue.settle_nowait(
            self.id, settlements, self.config.lease_ms, self._claim_size(), backoff_s))

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
            with self._lock:
                self._held.add(claim.lease)
        return claim

    def _send(self, request: Callable[[], int]) -> int | None:
        """Send a pipelined request; None if Redis is unreachable (the loop then claims afresh)."""
        try:
            return request()
        except RETRYABLE_REDIS_ERRORS as exc:
            self.log.warning("Worker %s: Redis unreachable (%s); results in flight are left to the reaper", self.id, exc)
            return None

    def _collect(self, ticket: int | None) -> Claim:
        """The reply to a pipelined request, with the rejections of earlier flushes folded in."""
        if ticket is None:
            return Claim()
        try:
            claim = self.queue.result(ticket)
        except RETRYABLE_REDIS_ERRORS as exc:
            self.log.warning("Worker %s: Redis unreachable (%s); results in flight are left to the reaper", self.id, exc)
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
        try:
            for i, claimed in enumerate(claim.tasks):
                if lease in self._lost:
                    break
                if self._stopping.is_set():  # hand back what was never started
                    pending += [Settlement(c.id, lease, "release", "") for c in claim.tasks[i:]]
                    break
                pending.append(self.perform(claimed, lease))
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
                self.id, lease, len(pending),
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
            try:
                late += self.queue.result(ticket).rejected
            except RETRYABLE_REDIS_ERRORS:
                pass  # lost with the connection: those tasks' leases expire and the reaper returns them
        self._flushes.clear()
        return replace(claim, rejected=late + claim.rejected) if late else claim

    def _note_rejected(self, claim: Claim) -> None:
        if claim.rejected:
            self.stats.rejected += len(claim.rejected)
            self.log.warning(
                "Worker %s: late result(s) for task(s) %s rejected; the lease had expired",
                self.id, ", ".join(claim.rejected),
            )

    def perform(self, claimed: Claimed, lease: str) -> Settlement:
        """Run one claimed task and say how it ended. Never raises for bad tasks."""
        self.stats.performed += 1
        started_at = self.clock()
        try:
            missing = [name for name, value in (("kind", claimed.kind), ("payload", claimed.payload)) if value is None]
            if missing:
                raise MalformedTask(f"task {claimed.id} is missing field(s): {', '.join(missing)}")
            payload = parse_payload(claimed.id, claimed.payload)
            handler = self.registry.get(claimed.kind)  # type: ignore[arg-type]
        except (MalformedTask, UnknownKind) as exc:
            self.stats.dead += 1
            self.log.error("Worker %s cannot run task %s: %s", self.id, claimed.id, exc)
            return Settlement(claimed.id, lease, "dead", str(exc), started_at, self.clock())
        task = Task(
            id=claimed.id, kind=claimed.kind, payload=payload, status=Status.RUNNING,  # type: ignore[arg-type]
            attempt=claimed.attempt, worker=self.id, lease=lease, started_at=started_at,
        )
        if claimed.inputs:
            try:
                task.depends_on, task.inputs, task.input_errors = inputs_of(claimed.inputs)
            except MalformedTask as exc:
                self.stats.dead += 1
                self.log.error("Worker %s cannot run task %s: %s", self.id, claimed.id, exc)
                return Settlement(claimed.id, lease, "dead", str(exc), started_at, self.clock())
        self.log.info("Worker %s picked up task %s", self.id, task.id)
        try:
            result = self._call(handler, task)
        except _Abandoned:
            raise
        except Exception as exc:  # a failing handler must never take the worker down
            self.stats.failed += 1
            self._attempts[task.id] = task.attempt
            message = f"{type(exc).__name__}: {exc}"
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

    def _call(self, handler: Callable[[Task], object], task: Task) -> object:
        if not self._chaos_active:
            return handler(task)
        faults = chaos_mod.draw(self.chaos, task.id, task.attempt)
        if faults.crash:
            time.sleep(float(task.payload.get("duration_ms", 0)) / 2000)
            if self._in_own_process:
                self.log.warning("Worker %s crashes (chaos) while holding task %s", self.id, task.id)
                os._exit(CRASH_EXIT_CODE)
            self.log.warning("Worker %s abandons its claim at task %s (chaos crash)", self.id, task.id)
            raise _Abandoned
        if faults.hang:
            self.log.warning("Worker %s hangs on task %s for %.2f s (chaos)", self.id, task.id, self.chaos.hang_s)
            self._frozen.set()
            try:
                time.sleep(self.chaos.hang_s)
            finally:
                self._frozen.clear()
        started = time.perf_counter()
        result = handler(task)
        if faults.straggle:
            time.sleep((self.chaos.straggler_factor - 1) * (time.perf_counter() - started))
        if faults.fail:
            raise chaos_mod.InjectedFailure(f"injected failure (chaos seed {self.chaos.seed})")
        return result

    def _ping_loop(self) -> None:
        """Renew this worker's leases every ping interval; mark the held ones Redis says are lost.

        Claims made ahead are renewed too, though their replies (and so their
        lease ids) are unread: Redis finds them by this worker's id.
        """
        every_s = self.config.ping_every_s
        while not self._finished.wait(every_s):
            with self._lock:
                leases = list(self._held)
            if not (leases or self._ahead) or self._frozen.is_set():
                continue
            try:
                lost = self.queue.heartbeat(leases, self.config.lease_ms, self.id, self._lease_floor)
            except RETRYABLE_REDIS_ERRORS as exc:
                self.log.warning("Worker %s: heartbeat failed (%s)", self.id, exc)
                continue
            if lost:
                with self._lock:
                    self._lost.update(lost)
                self.log.warning("Worker %s: lease(s) %s lost", self.id, ", ".join(lost))

    def _with_redis(self, call: Callable[[], T]) -> T:
        """Run ``call``; while Redis is unreachable, retry with capped exponential backoff."""
        delay_s = 0.05
        deadline = time.monotonic() + self.config.reconnect_s
        while True:
            try:
                return call()
            except RETRYABLE_REDIS_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise RedisGone(
                        f"worker {self.id}: Redis unreachable for {self.config.reconnect_s:g} s: {exc}"
                    ) from exc
                self.log.warning("Worker %s: Redis unreachable (%s); retrying in %.2f s", self.id, exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
