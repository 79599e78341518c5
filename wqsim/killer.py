"""A seeded killer: SIGKILL a random live worker every so often, the fault a queue must survive.

It aims at anything with ``pids()`` and ``kill(worker)`` (a WorkerPool, a
baselines.NaivePool), and draws every pause and every victim from
``random.Random(seed)``: given the same seed, two pools get the same schedule of
kills, so a naive queue and wqsim can be compared under the same killer.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("wqsim.killer")


class Killable(Protocol):
    def pids(self) -> dict[str, int]: ...

    def kill(self, worker_id: str) -> int | None: ...


class Killer:
    """Kill a random live worker of ``pool`` every ``pause_s`` (drawn uniformly from the range),
    at most ``kills`` times, until ``until()`` is true or ``stop()``.

    ``kills`` lists (worker id, pid) for each kill made. A worker killed a moment ago
    may still be listed by its pool until it is reaped: it is not chosen again.
    """

    def __init__(
        self,
        pool: Killable,
        seed: int,
        until: Callable[[], bool],
        kills: int = 5,
        pause_s: tuple[float, float] = (0.05, 0.15),
    ) -> None:
        self.pool, self.until, self.max_kills, self.pause_s = pool, until, kills, pause_s
        self.rng = random.Random(seed)
        self.kills: list[tuple[str, int]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"killer-{seed}", daemon=True)

    def start(self) -> Killer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while len(self.kills) < self.max_kills and not self._stop.wait(self.rng.uniform(*self.pause_s)):
                if self.until():
                    return
                killed = {pid for _, pid in self.kills}
                live = sorted(w for w, pid in self.pool.pids().items() if pid not in killed)
                if not live:
                    continue
                victim = self.rng.choice(live)
                pid = self.pool.kill(victim)
                if pid is not None:
                    self.kills.append((victim, pid))
                    log.info("Killer: SIGKILL to worker %s (pid %d)", victim, pid)
        except BaseException as exc:  # kept for the caller to raise: a killer that failed proves nothing
            self.error = exc

    def stop(self) -> list[tuple[str, int]]:
        """Stop killing and wait for the thread; the kills made. Raises what the thread raised."""
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error
        return self.kills
