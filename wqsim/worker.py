"""One worker's loop: claim, perform, settle-and-claim-next, and sleep only when idle.

A worker never crashes on a bad task: a malformed hash or unknown kind is
dead-lettered with a readable error, a handler exception is retried with
backoff. If Redis goes away, the worker keeps its outcomes and retries the
same fenced call after reconnecting; if its leases expired meanwhile, the
settle is rejected and the reaper has already returned those tasks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import redis

from . import chaos as chaos_mod
from .config import ChaosConfig, WorkerConfig
from .handlers import HandlerRegistry, UnknownKind
from .handlers import registry as default_registry
from .queue import Claim, Clock, Queue, Settlement
from .task import MalformedTask, Task

log = logging.getLogger("wqsim.worker")

T = TypeVar("T")

CRASH_EXIT_CODE = 70
RETRYABLE_REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


class RedisGone(RuntimeError):
    """Redis stayed unreachable for longer than ``reconnect_s``."""


class _Abandoned(Exception):
    """Chaos crash in thread mode: drop the task without settling it."""


@dataclass
class WorkerStats:
    performed: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
    rejected: int = 0
    abandoned: int = 0


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
        self.queue = Queue(client, queue, clock=clock)
        self.id = worker_id
        self.config = config or WorkerConfig()
        self.registry = registry or default_registry
        self.chaos = chaos or ChaosConfig()
        self.log = logger or log
        self.clock = clock
        self.stats = WorkerStats()
        self._in_own_process = in_own_process
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Finish and settle the task(s) in hand, claim nothing more, then return."""
        self._stopping.set()

    def run(self) -> WorkerStats:
        cfg = self.config
        claim = self._with_redis(lambda: self.queue.claim(self.id, cfg.lease_ms, self._claim_size()))
        while True:
            if claim.rejected:
                self.stats.rejected += len(claim.rejected)
                self.log.warning(
                    "Worker %s: late result(s) for task(s) %s rejected; the lease had expired",
                    self.id, ", ".join(claim.rejected),
                )
            if claim.tasks:
                claim = self._perform_and_settle(claim)
                continue
            if self._stopping.is_set() or (claim.drained and cfg.exit_when_drained):
                break
            wait_s = cfg.idle_wait_s
            if claim.next_due is not None:
                wait_s = min(wait_s, max(claim.next_due - self.clock(), 0.001))
            self._with_redis(lambda: self.queue.wait_for_work(wait_s))
            claim = self._with_redis(lambda: self.queue.claim(self.id, cfg.lease_ms, self._claim_size()))
        self._with_redis(lambda: self.queue.client.publish(self.queue.keys.finished_channel, self.id))
        self.log.info("Worker %s finished", self.id)
        return self.stats

    def _claim_size(self) -> int:
        return 0 if self._stopping.is_set() else self.config.batch_size

    def _perform_and_settle(self, claim: Claim) -> Claim:
        settlements: list[Settlement] = []
        attempts: list[int] = []
        for raw in claim.tasks:
            try:
                settlement = self.perform(raw)
            except _Abandoned:
                self.stats.abandoned += 1
                continue
            settlements.append(settlement)
            if settlement.outcome == "retry":
                attempts.append(int(raw.get("attempt", 1)))
        backoff_s = self.config.backoff_for(max(attempts)) if attempts else 0.0
        return self._with_redis(
            lambda: self.queue.settle(self.id, settlements, self.config.lease_ms, self._claim_size(), backoff_s)
        )

    def perform(self, raw: dict[str, str]) -> Settlement:
        """Run one claimed task hash and say how it ended. Never raises for bad tasks."""
        task_id = raw.get("id", "?")
        token = f"{raw.get('worker', self.id)}#{raw.get('attempt', '0')}"
        self.stats.performed += 1
        try:
            task = Task.from_hash(raw)
            handler = self.registry.get(task.kind)
        except (MalformedTask, UnknownKind) as exc:
            self.stats.dead += 1
            self.log.error("Worker %s cannot run task %s: %s", self.id, task_id, exc)
            return Settlement(task_id, token, "dead", str(exc))
        self.log.info("Worker %s picked up task %s", self.id, task.id)
        started = time.perf_counter()
        try:
            result = self._call(handler, task)
        except _Abandoned:
            raise
        except Exception as exc:  # a failing handler must never take the worker down
            return self._failed(task, token, exc)
        try:
            result_json = json.dumps(result, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            self.stats.dead += 1
            message = f"result of task {task.id} is not JSON-serialisable: {exc}"
            self.log.error("Worker %s: %s", self.id, message)
            return Settlement(task.id, token, "dead", message)
        self.stats.done += 1
        self.log.debug("Worker %s performed task %s in %.1f ms", self.id, task.id, 1000 * (time.perf_counter() - started))
        return Settlement(task.id, token, "done", result_json)

    def _failed(self, task: Task, token: str, exc: BaseException) -> Settlement:
        self.stats.failed += 1
        message = f"{type(exc).__name__}: {exc}"
        self.log.warning("Worker %s: task %s attempt %d failed: %s", self.id, task.id, task.attempt, message)
        return Settlement(task.id, token, "retry", message)

    def _call(self, handler: Callable[[Task], object], task: Task) -> object:
        faults = chaos_mod.draw(self.chaos, task.id, task.attempt)
        if faults.crash:
            time.sleep(float(task.payload.get("duration_ms", 0)) / 2000)
            if self._in_own_process:
                self.log.warning("Worker %s crashes (chaos) while holding task %s", self.id, task.id)
                os._exit(CRASH_EXIT_CODE)
            self.log.warning("Worker %s abandons task %s (chaos crash)", self.id, task.id)
            raise _Abandoned
        if faults.hang:
            self.log.warning("Worker %s hangs on task %s for %.2f s (chaos)", self.id, task.id, self.chaos.hang_s)
            time.sleep(self.chaos.hang_s)
        started = time.perf_counter()
        result = handler(task)
        if faults.straggle:
            time.sleep((self.chaos.straggler_factor - 1) * (time.perf_counter() - started))
        if faults.fail:
            raise chaos_mod.InjectedFailure(f"injected failure (chaos seed {self.chaos.seed})")
        return result

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
