"""Makes example tasks and enqueues them, as the seed's work server does first:
independent sleep tasks (``generate``), arrivals spread out in time (``arrivals``),
or an example task graph (``generate_graph``)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from .config import check_int_at_least, check_non_negative, check_positive
from .graph import example
from .keys import IdRange
from .queue import Queue
from .task import Task

log = logging.getLogger("wqsim.generator")


def make_tasks(
    ids: Sequence[str],
    kind: str = "sleep",
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
    timeout_s: float | None = None,
) -> list[Task]:
    """Build Task records sharing one kind, payload and time limit (enqueue stamps their times)."""
    body = dict(payload or {})
    return [Task(id=i, kind=kind, payload=body, max_attempts=max_attempts, timeout_s=timeout_s) for i in ids]


GENERATE_CHUNK = 25_000  # tasks made and enqueued at a time: memory stays flat whatever the count (measured:
# 60 MB peak RSS at 25,000, 123 MB at 100,000, which is also slower)


class PartialEnqueue(RuntimeError):
    """``generate`` failed after some of its chunks were written; the message says how many tasks."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def generate(
    queue: Queue,
    count: int = 100,
    duration_ms: float = 10.0,
    kind: str = "sleep",
    max_attempts: int = 3,
    package_size: int | None = None,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
    chunk: int = GENERATE_CHUNK,
) -> IdRange:
    """Create ``count`` sleep tasks and push their ids onto the queue's ready list.

    The seed wrote hashes and pushed keys one command at a time; here tasks
    are made and enqueued ``chunk`` at a time (see Queue.enqueue), so memory
    stays flat for any count. Each chunk is atomic: all of it or none of it is
    written. A count that fits in one chunk is therefore all-or-nothing; for a
    larger one, a failure part-way leaves the chunks before it in the queue
    (complete, consistent, and counted in its ``total``), and the log line and
    the exception say how many tasks were written. With ``package_size``, tasks are
    bundled into work packages of that many tasks (the seed's Scaling
    section), each claimed as one unit under one lease; a package never spans
    two chunks. ``timeout_s`` gives every task its own time limit (see
    WorkerConfig.task_timeout_s). Returns the new task ids (an IdRange).
    """
    logger = logger or log
    check_int_at_least("count", count, 1)
    check_non_negative("duration_ms", duration_ms)
    check_int_at_least("chunk", chunk, 1)
    if package_size is not None:
        check_int_at_least("package_size", package_size, 1)
        chunk = max(chunk - chunk % package_size, package_size)
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    ids = queue.reserve_ids(count)
    written = packages = 0
    for part in ids.chunks(chunk):
        tasks = make_tasks(part, kind=kind, payload=payload, max_attempts=max_attempts, timeout_s=timeout_s)
        try:
            packages += len(queue.enqueue(tasks, package_size=package_size))
        except Exception as exc:
            if written:
                logger.error(
                    "Created %d work items out of %d before failing (%s: %s); those %d stay queued, "
                    "the rest were not written",
                    written,
                    count,
                    type(exc).__name__,
                    exc,
                    written,
                )
                raise PartialEnqueue(
                    f"generate stopped after {written:,} of {count:,} tasks were written (in whole "
                    f"chunks of {chunk:,}): {type(exc).__name__}: {exc}",
                    written,
                ) from exc
            raise
        written += len(tasks)
        if written < count:
            logger.debug("Created %d work items out of %d so far", written, count)
    logger.info("Created %d work items out of %d", written, count)
    if packages:
        logger.info("Bundled them into %d work packages of up to %d", packages, package_size)
    return ids


def generate_graph(
    queue: Queue,
    name: str,
    tasks: int = 20,
    duration_ms: float = 10.0,
    seed: int = 0,
    max_attempts: int = 3,
    timeout_s: float | None = None,
    allow_failure: bool = False,
) -> list[Task]:
    """Enqueue the example graph ``name`` (see wqsim.graph.example) and return its tasks.

    The graph is written as one atomic unit (Queue.enqueue), so a dependent
    never waits on a half-written graph; ``allow_failure`` lets dependents of a
    failed task run instead of being cancelled. ``max_attempts`` and
    ``timeout_s`` apply to every task, as in ``generate``.
    """
    graph = example(name, tasks, duration_ms, seed)
    for task in graph:
        task.max_attempts = max_attempts
        task.timeout_s = timeout_s
    queue.enqueue(graph, allow_failure=allow_failure)
    return graph


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
    check_int_at_least("count", count, 1)
    check_positive("rate_per_s", rate_per_s)
    check_non_negative("duration_ms", duration_ms)
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
