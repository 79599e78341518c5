"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import random
import threading
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


class Killer(threading.Thread):
    """SIGKILLs a random live worker of ``pool`` every 100-300 ms until the queue is drained.

    Every choice (the pause, the victim) comes from ``random.Random(seed)``. The
    pool's own supervisor replaces each killed process, as it would in production.
    """

    def __init__(self, pool: WorkerPool, queue: Queue, seed: int) -> None:
        super().__init__(name=f"killer-{seed}", daemon=True)
        self.pool = pool
        self.queue = queue
        self.rng = random.Random(seed)
        self.kills: list[tuple[str, int]] = []  # (worker id, pid)
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            while not self._stop_event.wait(self.rng.uniform(0.1, 0.3)):
                if self.queue.drained():
                    return
                # A worker killed a moment ago may still be listed until the supervisor reaps it:
                # killing it again would count one death twice.
                killed = {pid for _, pid in self.kills}
                live = {worker: pid for worker, pid in self.pool.pids().items() if pid not in killed}
                if not live:
                    continue
                victim = self.rng.choice(sorted(live))
                pid = self.pool.kill(victim)  # under the pool's lock: never a reaped pid reused
                if pid is not None:
                    self.kills.append((victim, pid))
        except BaseException as exc:  # surfaced by the test, never swallowed
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    @property
    def processes_killed(self) -> int:
        """Distinct processes killed: a victim not yet reaped may be chosen, and killed, again."""
        return len({pid for _, pid in self.kills})
