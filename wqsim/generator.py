"""Makes example tasks and enqueues them, as the seed's work server does first."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from .queue import Queue
from .task import Task

log = logging.getLogger("wqsim.generator")


def make_tasks(
    ids: list[str],
    kind: str = "sleep",
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
    timeout_s: float | None = None,
) -> list[Task]:
    """Build Task records sharing one kind, payload and time limit (enqueue stamps their times)."""
    body = dict(payload or {})
    return [Task(id=i, kind=kind, payload=body, max_attempts=max_attempts, timeout_s=timeout_s) for i in ids]


def generate(
    queue: Queue,
    count: int = 100,
    duration_ms: float = 10.0,
    kind: str = "sleep",
    max_attempts: int = 3,
    package_size: int | None = None,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
) -> list[str]:
    """Create ``count`` sleep tasks and push their ids onto the queue's ready list.

    The seed wrote hashes and pushed keys one command at a time; here the whole
    batch is one round trip (see Queue.enqueue), so it is fast and all-or-nothing. With
    ``package_size``, tasks are bundled into work packages of that many tasks
    (the seed's Scaling section), each claimed as one unit under one lease.
    ``timeout_s`` gives every task its own time limit (see WorkerConfig.task_timeout_s).
    Returns the new task ids.
    """
    logger = logger or log
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1 (got {count!r})")
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    ids = queue.allocate_ids(count)
    tasks = make_tasks(ids, kind=kind, payload=payload, max_attempts=max_attempts, timeout_s=timeout_s)
    packages = queue.enqueue(tasks, package_size=package_size)
    logger.info("Created %d work items out of %d", len(tasks), count)
    if packages:
        logger.info("Bundled them into %d work packages of up to %d", len(packages), package_size)
    return ids


def arrivals(
    queue: Queue,
    count: int,
    rate_per_s: float,
    duration_ms: float = 10.0,
    seed: int = 0,
    kind: str = "sleep",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Enqueue ``count`` tasks one at a time as a Poisson process of ``rate_per_s``.

    The queueing-theory notebooks need arrivals spread out in time (the "M" in
    M/M/c) rather than all at once. Inter-arrival gaps are exponential, drawn
    from ``random.Random(seed)``; each task is enqueued at its scheduled time,
    counted from the first (so a slow enqueue does not shift the rest).
    Blocks until the last task is enqueued; returns the ids.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1 (got {count!r})")
    if isinstance(rate_per_s, bool) or not isinstance(rate_per_s, (int, float)) or not rate_per_s > 0:
        raise ValueError(f"rate_per_s must be a positive number (got {rate_per_s!r})")
    rng = random.Random(seed)
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    ids = queue.allocate_ids(count)
    start = clock()
    due = 0.0
    for task in make_tasks(ids, kind=kind, payload=payload):
        wait = start + due - clock()
        if wait > 0:
            sleep(wait)
        queue.enqueue([task])
        due += rng.expovariate(rate_per_s)
    return ids
