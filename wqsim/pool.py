"""The worker pool: (cores - 1) worker processes by default, or threads.

Each worker has its own Redis connection. In process mode a supervisor thread
owns the worker processes: it forks them, reaps them, and replaces one that
died (a crash, an OOM kill, ``kill -9``, a task past its time limit) for as
long as the queue still has unfinished tasks, as a prefork pool would; the
tasks the dead worker held come back through lease expiry and the reaper.

A worker that Redis refuses a permission (see wqsim.acl) sends the one-line
explanation to the pool and exits with CONFIG_EXIT_CODE (78, EX_CONFIG): a
replacement would be refused the same, so none is started; the pool stops
the other workers and ``refused`` holds the line for the caller to report.

Two rules keep stopping reliable:
- Only the supervisor reaps (waits for) a worker process, while holding the
  pool's lock. Two threads that both wait for one child race for its exit
  status, and the loser believes the child is still running.
- A worker process dies with its parent (Linux ``PR_SET_PDEATHSIG``): if the
  supervising process is killed, nobody would replace, stop or watch its
  workers, so they are killed too and the reaper returns their tasks.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as mp_wait

from . import acl
from .acl import CONFIG_EXIT_CODE
from .config import ChaosConfig, WorkerConfig
from .connection import connect
from .queue import Queue
from .sharded_worker import ShardedWorker
from .shards import ShardedQueue, check_shards
from .stopping import STOP_SIGNALS
from .worker import (
    CRASH_EXIT_CODE,
    QUEUE_VANISHED_EXIT_CODE,
    REDIS_GONE_EXIT_CODE,
    TIME_LIMIT_EXIT_CODE,
    RedisGone,
    Worker,
)

log = logging.getLogger("wqsim.pool")

RECHECK_S = 0.5  # how often the supervisor asks again while Redis is unreachable
_READY_POLL_S = 0.05  # how often wait_ready looks whether the pool has exited meanwhile
_PR_SET_PDEATHSIG = 1
ORPHAN_EXIT_CODE = 75  # the worker found its parent gone before it could arrange to die with it


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when the thread that forked it ends (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the worker outlives a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(ORPHAN_EXIT_CODE)


def make_worker(
    url: str,
    queue: str,
    shards: int,
    worker_id: str,
    config: WorkerConfig,
    chaos: ChaosConfig,
    in_own_process: bool = False,
    on_ready: Callable[[], object] | None = None,
) -> Worker | ShardedWorker:
    """A worker of ``queue``: one loop, or with ``shards`` > 1 one loop per shard (see wqsim.sharded_worker)."""
    if shards > 1:
        return ShardedWorker(
            url, queue, shards, worker_id, config, chaos=chaos, in_own_process=in_own_process, on_ready=on_ready
        )
    client = connect(url, queue=queue)
    return Worker(client, queue, worker_id, config, chaos=chaos, in_own_process=in_own_process, on_ready=on_ready)


def _process_main(
    url: str,
    queue: str,
    worker_id: str,
    config: WorkerConfig,
    chaos: ChaosConfig,
    parent_pid: int,
    refusals: mp.SimpleQueue[str] | None = None,
    ready: Callable[[], object] | None = None,
    shards: int = 1,
) -> None:
    """Entry point of one worker process: SIGTERM and SIGINT stop it gracefully.

    The process starts with both signals blocked (see WorkerPool._supervise): one
    that arrives before the handlers are in place waits, rather than killing the
    process or, worse, running the parent's handler in the child.
    """
    _die_with_parent(parent_pid)
    signal.set_wakeup_fd(-1)  # the parent's wake-up pipe is not this process's
    worker = make_worker(url, queue, shards, worker_id, config, chaos, in_own_process=True, on_ready=ready)
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda *_: worker.stop())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        stats = worker.run()
    except RedisGone as exc:  # said in one line, here; the supervisor decides whether to replace it
        log.error("%s", exc)
        sys.exit(REDIS_GONE_EXIT_CODE)
    except Exception as exc:
        message = acl.explain(exc, queue, acl.user_of_url(url), shards)
        if message is None:
            raise
        if refusals is not None:
            refusals.put(message)
        sys.exit(CONFIG_EXIT_CODE)
    if stats.queue_vanished:
        raise SystemExit(QUEUE_VANISHED_EXIT_CODE)  # said once, in its log line: not replaced


def describe_exit(code: int | None) -> str:
    """A worker process's exit code in words, for log lines."""
    return {
        CRASH_EXIT_CODE: "crashed (chaos)",
        TIME_LIMIT_EXIT_CODE: "was stopped: its task ran past its time limit",
        ORPHAN_EXIT_CODE: "found its parent gone",
        CONFIG_EXIT_CODE: "stopped: Redis refused it a permission",
        QUEUE_VANISHED_EXIT_CODE: "stopped: its queue vanished from Redis",
        REDIS_GONE_EXIT_CODE: "gave up on an unreachable Redis",
    }.get(code or 0, f"died (exit code {code})")


def signal_unless_reaped(proc: mp.process.BaseProcess, sig: int) -> bool:
    """Send ``sig`` to a worker process unless it has been reaped already; True if it was sent.

    The supervisor reaps under the pool's lock, but so does starting any process:
    multiprocessing reaps every exited child then (``Process.start``). A worker that
    died just before a replacement started can thus be reaped before the supervisor's
    next round removes it; its pid is no longer ours (kill would fail with ESRCH, or
    hit a process that reused it). Its exit code says so: it is set once reaped, and
    asking for it reaps one that is exiting. Call under the pool's lock.
    """
    if proc.pid is None or proc.exitcode is not None:
        return False
    os.kill(proc.pid, sig)
    return True


class WorkerPool:
    """Runs ``len(ids)`` workers on one queue. Use ``start()``, then ``join()``.

    on_exit: called (from the supervisor thread) once every worker has exited
        and none will be replaced, so a main loop can wait on one thing.
    """

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
        on_exit: Callable[[], None] | None = None,
        shards: int = 1,
    ) -> None:
        if mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread' (got {mode!r})")
        if not ids:
            raise ValueError("a pool needs at least one worker id")
        self.url = url
        self.queue_name = queue
        self.shards = check_shards(shards)
        self.ids = [str(i) for i in ids]
        self.config = config or WorkerConfig()
        self.chaos = chaos or ChaosConfig()
        self.mode = mode
        self.restart_crashed = restart_crashed
        self.log = logger or log
        self.on_exit = on_exit
        self.restarts = 0
        self.refused: str | None = None  # why Redis refused a worker a permission (see wqsim.acl)
        self._ctx = mp.get_context("fork")  # handlers registered in the parent carry over
        self._refusals = self._ctx.SimpleQueue()  # worker processes -> supervisor: refusal lines
        self._ready = self._ctx.Semaphore(0)  # released once by each worker about to look for work
        self._ready_seen = 0  # releases taken by wait_ready
        self._ready_lock = threading.Lock()  # one wait_ready counts at a time
        self._live: dict[str, mp.process.BaseProcess] = {}  # forked and not yet reaped
        self._exit_codes: dict[str, int | None] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._workers: dict[str, Worker | ShardedWorker] = {}
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._exited = threading.Event()  # every worker has exited and none will be replaced
        self._lock = threading.Lock()  # guards _live and _exit_codes, and every fork and reap
        self._supervisor: threading.Thread | None = None

    def start(self) -> WorkerPool:
        """Start the workers; returns once every one of them has been started."""
        target = self._supervise if self.mode == "process" else self._run_threads
        self._supervisor = threading.Thread(target=target, name="wqsim-supervisor", daemon=True)
        self._supervisor.start()
        self._started.wait()
        return self

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Wait until every worker has connected, synced its clock and is about to look for work.

        True if all ``len(ids)`` did within ``timeout_s``; False on timeout, or as
        soon as the pool has exited (a worker refused a permission, say). Start the
        pool, wait, then enqueue: a measurement then times the work, not the
        start-up of processes (BullMQ's ``waitUntilReady``, Celery's ``worker_ready``).
        A replacement worker counts too, so a worker that died starting is not waited for in vain.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._ready_lock:
            while self._ready_seen < len(self.ids):
                if self._exited.is_set():
                    return False
                left = _READY_POLL_S if deadline is None else min(_READY_POLL_S, deadline - time.monotonic())
                if left <= 0:
                    return False
                if self._ready.acquire(timeout=left):
                    self._ready_seen += 1
            return True

    def _spawn(self, worker_id: str) -> None:
        """Fork one worker process; the caller holds ``_lock``."""
        proc = self._ctx.Process(
            target=_process_main,
            args=(
                self.url,
                self.queue_name,
                worker_id,
                self.config,
                self.chaos,
                os.getpid(),
                self._refusals,
                self._ready.release,
                self.shards,
            ),
            name=f"wqsim-worker-{worker_id}",
        )
        proc.start()
        self._live[worker_id] = proc
        self._exit_codes[worker_id] = None

    def _queue(self) -> Queue | ShardedQueue:
        """The queue the supervisor asks whether work is left (every shard of it)."""
        if self.shards > 1:
            return ShardedQueue.connect(self.url, self.queue_name, self.shards, attempts=1)
        return Queue(connect(self.url, queue=self.queue_name, attempts=1), self.queue_name)

    def _run_threads(self) -> None:
        """Thread mode: run every worker in a thread of this process and wait for them all."""
        try:
            for worker_id in self.ids:
                worker = make_worker(
                    self.url,
                    self.queue_name,
                    self.shards,
                    worker_id,
                    self.config,
                    self.chaos,
                    on_ready=self._ready.release,
                )
                thread = threading.Thread(
                    target=self._run_thread, args=(worker,), name=f"wqsim-worker-{worker_id}", daemon=True
                )
                self._workers[worker_id] = worker
                self._threads[worker_id] = thread
                thread.start()
        finally:
            self._started.set()
        for thread in list(self._threads.values()):
            thread.join()
        self._finish()

    def _run_thread(self, worker: Worker | ShardedWorker) -> None:
        """Thread mode: one worker; a refused permission stops the pool, like a worker process's would."""
        try:
            worker.run()
        except Exception as exc:
            message = acl.explain(exc, self.queue_name, acl.user_of_url(self.url), self.shards)
            if message is None:
                raise
            self._refuse(message)

    def _refuse(self, message: str) -> None:
        """Redis refused a worker a permission: keep the first line, and stop every worker."""
        if self.refused is None:
            self.refused = message
            self.log.debug("Stopping every worker: %s", message)
        self.stop()

    def _supervise(self) -> None:
        """Fork the workers, then reap each one that exits and replace it while work remains.

        This thread blocks SIGTERM and SIGINT for good: they are handled by the
        main thread, and the children it forks start with them blocked until
        their own handlers are in place. The forking thread is also what
        PR_SET_PDEATHSIG watches, and this one lives as long as any worker.
        Sleeps on the processes' sentinels; only while Redis cannot say whether
        tasks are left does it ask again, every RECHECK_S.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with self._lock:
                for worker_id in self.ids:
                    if not self._stopping.is_set():
                        self._spawn(worker_id)
        finally:
            self._started.set()
        queue: Queue | ShardedQueue | None = None
        undecided: dict[str, int | None] = {}  # died, not yet replaced or let go: worker id -> exit code
        refused: list[str] = []  # refusal lines of workers that exited with CONFIG_EXIT_CODE
        while True:
            with self._lock:
                live = list(self._live.items())
            if not live and not undecided:
                break
            ready = set(mp_wait([proc.sentinel for _, proc in live])) if not undecided else set()
            with self._lock:
                for worker_id, proc in live:
                    # A ready sentinel means the process is exiting, though for a moment it may not
                    # be reapable yet: join() waits that moment out. This thread alone reaps workers.
                    if proc.sentinel not in ready and proc.exitcode is None:
                        continue
                    proc.join()
                    code = self._exit_codes[worker_id] = proc.exitcode
                    del self._live[worker_id]
                    proc.close()
                    if code == CONFIG_EXIT_CODE:
                        refused.append(
                            self._refusals.get()
                            if not self._refusals.empty()
                            else f"worker {worker_id} stopped: Redis refused it a permission"
                        )
                    elif (
                        code not in (0, QUEUE_VANISHED_EXIT_CODE)
                        and self.restart_crashed
                        and not self._stopping.is_set()
                    ):
                        undecided[worker_id] = code
            if refused:
                self._refuse(refused[0])  # outside the lock: stop() takes it
                refused.clear()
            if self._stopping.is_set():
                undecided.clear()  # stop() came first: start nothing it would not stop
            if not undecided:
                continue
            try:
                queue = queue or self._queue()
                unfinished = not queue.drained()
            except Exception as exc:  # Redis down: ask again shortly
                self.log.warning("Supervisor cannot read the queue (%s); asking again in %g s", exc, RECHECK_S)
                self._stopping.wait(RECHECK_S)
                continue
            with self._lock:
                for worker_id, code in undecided.items():
                    if unfinished and not self._stopping.is_set():
                        self.log.warning("Worker %s %s; starting a replacement", worker_id, describe_exit(code))
                        self.restarts += 1
                        self._spawn(worker_id)
            undecided.clear()
        self._finish()

    def _finish(self) -> None:
        self._exited.set()
        if self.on_exit is not None:
            self.on_exit()

    def pids(self) -> dict[str, int]:
        """Current process id of each live worker (process mode)."""
        with self._lock:
            return {wid: p.pid for wid, p in self._live.items() if p.pid is not None}

    def kill(self, worker_id: str, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` to one worker process (the chaos killer uses this); returns its pid, or None.

        Under the lock, so the supervisor cannot reap the process, and its pid be reused, in
        between. The process may be exiting already (killed before, not yet reaped): the same
        pid is then returned again. One already reaped is not signalled (see signal_unless_reaped).
        """
        with self._lock:
            proc = self._live.get(worker_id)
            if proc is None or not signal_unless_reaped(proc, sig):
                return None
            return proc.pid

    def stop(self) -> None:
        """Ask every worker to finish the task in hand and exit; no replacement starts after this."""
        with self._lock:
            self._stopping.set()
            for proc in self._live.values():
                signal_unless_reaped(proc, signal.SIGTERM)
        for worker in list(self._workers.values()):
            worker.stop()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for every worker to exit; True if all did within ``timeout_s``."""
        return self._exited.wait(timeout_s)

    def queue_vanished(self) -> bool:
        """Did a worker stop because the queue vanished from Redis (see Worker._queue_vanished)?"""
        with self._lock:
            codes = list(self._exit_codes.values())
        return QUEUE_VANISHED_EXIT_CODE in codes or any(w.stats.queue_vanished for w in self._workers.values())

    def exit_codes(self) -> dict[str, int | None]:
        """Each worker's latest exit code (None while it runs)."""
        with self._lock:
            return dict(self._exit_codes)

    def terminate(self) -> None:
        """Last resort: SIGKILL whatever is still running, and wait for the supervisor to reap it."""
        with self._lock:
            self._stopping.set()
            for proc in self._live.values():
                signal_unless_reaped(proc, signal.SIGKILL)
        self._exited.wait(5)
