"""The reaper: returns tasks whose lease expired to the ready list.

A worker that dies (or hangs) holding a task stops renewing its lease; Redis
expires the lease key, and the reaper moves the task back. Several reapers may
run at once: reap.lua handles each expired task exactly once.
"""

from __future__ import annotations

import logging
import threading

from .config import check_positive
from .queue import Queue, ReapResult

log = logging.getLogger("wqsim.reaper")


class Reaper:
    def __init__(self, queue: Queue, interval_s: float = 1.0, logger: logging.Logger | None = None) -> None:
        self.queue = queue
        self.interval_s = check_positive("interval_s", interval_s)
        self.log = logger or log
        self.returned = 0
        self.buried = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def reap_once(self, now: float | None = None, limit: int = 1000) -> ReapResult:
        """Reap every expired lease now (in batches of ``limit``)."""
        returned = buried = 0
        while True:
            result = self.queue.reap(limit=limit, now=now)
            returned += result.returned
            buried += result.buried
            if result.returned + result.buried < limit:
                break
        if returned or buried:
            self.log.info("Reaper returned %d expired task(s) to the queue, dead-lettered %d", returned, buried)
        self.returned += returned
        self.buried += buried
        return ReapResult(returned, buried)

    def run(self) -> None:
        """Reap every ``interval_s`` until ``stop()``. Survives Redis outages."""
        while not self._stop.is_set():
            try:
                self.reap_once()
            except Exception as exc:  # keep reaping after a Redis restart
                self.log.warning("Reaper: %s; retrying in %.2f s", exc, self.interval_s)
            self._stop.wait(self.interval_s)

    def start(self) -> Reaper:
        self._thread = threading.Thread(target=self.run, name=f"wqsim-reaper-{self.queue.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
