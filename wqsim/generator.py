"""Makes example tasks and enqueues them, as the seed's work server does first."""

from __future__ import annotations

import logging
from typing import Any

from .queue import Queue
from .task import Task

log = logging.getLogger("wqsim.generator")


def make_tasks(
    ids: list[str],
    kind: str = "sleep",
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> list[Task]:
    """Build Task records sharing one kind and payload (enqueue stamps their times)."""
    body = dict(payload or {})
    return [Task(id=i, kind=kind, payload=body, max_attempts=max_attempts) for i in ids]


def generate(
    queue: Queue,
    count: int = 100,
    duration_ms: float = 10.0,
    kind: str = "sleep",
    max_attempts: int = 3,
    package_size: int | None = None,
    logger: logging.Logger | None = None,
) -> list[str]:
    """Create ``count`` sleep tasks and push their ids onto the queue's ready list.

    The seed wrote hashes and pushed keys one command at a time; here the whole
    batch is one pipelined MULTI/EXEC, so it is fast and all-or-nothing. With
    ``package_size``, tasks are bundled into work packages of that many tasks
    (the seed's Scaling section), each claimed as one unit under one lease.
    Returns the new task ids.
    """
    logger = logger or log
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1 (got {count!r})")
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    ids = queue.allocate_ids(count)
    tasks = make_tasks(ids, kind=kind, payload=payload, max_attempts=max_attempts)
    packages = queue.enqueue(tasks, package_size=package_size)
    logger.info("Created %d work items out of %d", len(tasks), count)
    if packages:
        logger.info("Bundled them into %d work packages of up to %d", len(packages), package_size)
    return ids
