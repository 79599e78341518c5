"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from wqsim import Queue, Reaper, WorkerPool


class FakeClock:
    """A clock that stands still until a test moves it (``clock.now += 5``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def done_count(queue: Queue, task_id: str) -> int:
    """How many times the durable event stream records ``task_id`` as done."""
    return sum(e["id"].split(" ").count(task_id) for e in queue.events() if e["event"] == "done")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; a deadline, not a timing assert."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


@contextlib.contextmanager
def running(pool: WorkerPool, *reapers: Reaper) -> Iterator[WorkerPool]:
    """Start ``pool``; whatever happens, no worker process or reaper thread outlives the test."""
    pool.start()
    try:
        yield pool
    finally:
        shut_down(pool)
        for reaper in reapers:
            reaper.stop()


def shut_down(pool: WorkerPool) -> None:
    """stop(), join(), terminate() if need be."""
    if pool.join(0):
        return
    pool.stop()
    if not pool.join(10):
        pool.terminate()
