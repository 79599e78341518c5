"""The worker pool: (cores - 1) worker processes by default, or threads.

Each worker has its own Redis connection. In process mode a supervisor thread
replaces a worker that died (a crash, an OOM kill, ``kill -9``) for as long as
the queue still has unfinished tasks, as a prefork pool would; the tasks the
dead worker held come back through lease expiry and the reaper.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import wait as mp_wait

from .config import ChaosConfig, WorkerConfig
from .connection import connect
from .queue import Queue
from .worker import Worker

log = logging.getLogger("wqsim.pool")

RECHECK_S = 0.5  # how often the supervisor asks again while Redis is unreachable


def _process_main(url: str, queue: str, worker_id: str, config: WorkerConfig, chaos: ChaosConfig) -> None:
    """Entry point of one worker process: SIGTERM and SIGINT stop it gracefully."""
    worker = Worker(connect(url), queue, worker_id, config, chaos=chaos, in_own_process=True)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    signal.signal(signal.SIGINT, lambda *_: worker.stop())
    worker.run()


class WorkerPool:
    """Runs ``len(ids)`` workers on one queue. Use ``start()``, then ``join()``."""

    def __init__(
        self,
        url: str,
        queue: str,
        ids: Sequence[str],
        config: WorkerConfig | None = None,
        chaos: ChaosConfig | None = None,
        mode: str = "process",
        restart_crashed: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread' (got {mode!r})")
        if not ids:
            raise ValueError("a pool needs at least one worker id")
        self.url = url
        self.queue_name = queue
        self.ids = [str(i) for i in ids]
        self.config = config or WorkerConfig()
        self.chaos = chaos or ChaosConfig()
        self.mode = mode
        self.restart_crashed = restart_crashed
        self.log = logger or log
        self.restarts = 0
        self._ctx = mp.get_context("fork")  # handlers registered in the parent carry over
        self._procs: dict[str, mp.process.BaseProcess] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._workers: dict[str, Worker] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # guards _procs: the supervisor replaces entries while others read them
        self._supervisor: threading.Thread | None = None

    def start(self) -> WorkerPool:
        with self._lock:
            for worker_id in self.ids:
                self._spawn(worker_id)
        if self.mode == "process":
            self._supervisor = threading.Thread(target=self._supervise, name="wqsim-supervisor", daemon=True)
            self._supervisor.start()
        return self

    def _spawn(self, worker_id: str) -> None:
        """Start one worker; in process mode the caller holds ``_lock``."""
        if self.mode == "process":
            proc = self._ctx.Process(
                target=_process_main,
                args=(self.url, self.queue_name, worker_id, self.config, self.chaos),
                name=f"wqsim-worker-{worker_id}",
            )
            proc.start()
            self._procs[worker_id] = proc
        else:
            worker = Worker(connect(self.url), self.queue_name, worker_id, self.config, chaos=self.chaos)
            thread = threading.Thread(target=worker.run, name=f"wqsim-worker-{worker_id}", daemon=True)
            self._workers[worker_id] = worker
            self._threads[worker_id] = thread
            thread.start()

    def _supervise(self) -> None:
        """Replace worker processes that die while the queue still has unfinished tasks.

        Sleeps on the processes' sentinels, so it wakes when one exits, not on
        a timer. Only while Redis cannot say whether tasks are left does it
        ask again, every RECHECK_S. It never reaps a process itself beyond
        reading ``exitcode``: a blocking wait here would race join() in
        another thread for the child's exit status.
        """
        queue = Queue(connect(self.url), self.queue_name)
        seen: set[mp.process.BaseProcess] = set()  # exits already dealt with
        undecided: dict[str, int | None] = {}  # died, not yet replaced or let go: worker id -> exit code
        while True:
            with self._lock:
                procs = list(self._procs.items())
            seen &= {p for _, p in procs}  # forget the replaced ones
            exited = [(wid, p) for wid, p in procs if p.exitcode is not None and p not in seen]
            if not exited and not undecided:
                running = {p.sentinel: p for _, p in procs if p.exitcode is None}
                if not running:
                    return
                if all(running[ready].exitcode is None for ready in mp_wait(list(running))):
                    time.sleep(0.001)  # a sentinel closes just before its process can be reaped
                continue
            for worker_id, proc in exited:
                seen.add(proc)
                if proc.exitcode != 0 and self.restart_crashed:
                    undecided[worker_id] = proc.exitcode
            if self._stopping.is_set():
                undecided.clear()  # stop() came first: start nothing it would not stop
            if not undecided:
                continue
            try:
                unfinished = not queue.drained()
            except Exception as exc:  # Redis down: ask again shortly
                self.log.warning("Supervisor cannot read the queue (%s)", exc)
                time.sleep(RECHECK_S)
                continue
            with self._lock:
                for worker_id, exit_code in undecided.items():
                    if unfinished and not self._stopping.is_set():
                        self.log.warning("Worker %s died (exit code %s); starting a replacement", worker_id, exit_code)
                        self.restarts += 1
                        self._spawn(worker_id)
            undecided.clear()

    def pids(self) -> dict[str, int]:
        """Current process id of each live worker (process mode)."""
        with self._lock:
            return {wid: p.pid for wid, p in self._procs.items() if p.pid is not None and p.exitcode is None}

    def kill(self, worker_id: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one worker process (the chaos killer uses this)."""
        with self._lock:
            proc = self._procs[worker_id]
            if proc.pid is not None and proc.exitcode is None:
                os.kill(proc.pid, sig)

    def stop(self) -> None:
        """Ask every worker to finish the task in hand and exit; no replacement starts after this."""
        with self._lock:
            self._stopping.set()
            for proc in self._procs.values():
                if proc.exitcode is None and proc.pid is not None:
                    os.kill(proc.pid, signal.SIGTERM)
        for worker in self._workers.values():
            worker.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for every worker to exit; True if all did within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        if self._supervisor is not None:
            self._supervisor.join(left())
            if self._supervisor.is_alive():
                return False
        with self._lock:
            procs = list(self._procs.values())
        for proc in procs:
            proc.join(left())
        for thread in self._threads.values():
            thread.join(left())
        return not any(p.exitcode is None for p in procs) and not any(t.is_alive() for t in self._threads.values())

    def exit_codes(self) -> dict[str, int | None]:
        with self._lock:
            return {wid: p.exitcode for wid, p in self._procs.items()}

    def terminate(self) -> None:
        """Last resort: kill whatever is still running."""
        with self._lock:
            self._stopping.set()
            procs = list(self._procs.values())
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()
                proc.join(5)
