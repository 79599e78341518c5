"""Adapters that measure wqsim's peers (RQ, Celery, Huey, a raw redis-py loop) on one workload.

Every adapter takes the Redis URL and its own queue name / key prefix, returns
plain floats or lists, prints nothing (it logs through :mod:`logging`), and
removes its keys, subprocesses and threads before returning, also on error.

Throughput (``*_throughput``) is the drain rate of a pre-filled queue: the
queue is loaded with ``mark(start)``, ``n`` × ``noop()``, ``mark(end)`` (see
:mod:`benchmarks.peer_tasks`), then one worker is started, and throughput is
``n / (t_end - t_start)`` where the markers are the wall-clock times at which
those two tasks started.  Worker start-up, enqueueing and shut-down are
therefore excluded, identically for every peer.  ``raw_throughput`` runs
in-process and times its consume loop directly.

Pickup latency (:func:`latency_samples`) is measured on an *idle* worker:
the worker is started, runs one warm-up task, is left idle for a moment, then
``count`` tasks are enqueued ``spacing_s`` apart, each carrying ``time.time()``
taken just before the library's enqueue call (so the library's client-side
enqueue cost is included).  The task computes ``time.time() - enqueued`` when
it starts and RPUSHes it to a Redis list.  How each library waits when idle,
all left at its defaults:

* RQ 3.0 (``rq worker -w rq.worker.SimpleWorker``, a subprocess): blocks in
  ``BLMOVE queue -> intermediate queue`` with a timeout of ``worker_ttl - 15``
  = 405 s, so a job is pushed to the worker the moment it is enqueued.
  SimpleWorker (no fork per job) is used to match the throughput adapter; the
  default forking ``Worker`` would add a ``fork()`` to every pickup.
* Celery 5.7 (solo pool, a subprocess): kombu's Redis transport keeps a
  ``BRPOP`` with ``brpop_timeout`` = 1 s registered in the worker's event loop
  (``polling_interval`` is None: no sleep between polls), so pickup is also
  push-based; the 1 s only bounds how often the BRPOP is re-issued.
* Huey 3.5 (``RedisHuey`` consumer, one worker thread, in-process): the Redis
  storage defaults to ``blocking=True``, i.e. ``BRPOP`` with
  ``read_timeout`` = 1 s.  The consumer's polling back-off (``initial_delay``
  0.1 s × ``backoff`` 1.15 up to ``max_delay`` 10 s) applies only to
  non-blocking storages (or after a storage error), so it never engages here.
  We keep the defaults (``workers=1``, ``worker_type='thread'``, the
  scheduler thread included); a ``RedisHuey(blocking=False)`` would instead
  poll with that back-off and show latencies of up to seconds when idle.
* raw: a thread in ``BLMOVE ready processing RIGHT LEFT 1`` (re-issued every
  second while idle), then the task, then ``LREM``; no lease, no result.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

from benchmarks import peer_tasks

log = logging.getLogger(__name__)

SYSTEMS: tuple[str, ...] = ("rq", "celery", "huey", "raw")

# The directory that holds the ``benchmarks`` package: worker subprocesses need
# it on sys.path to import benchmarks.peer_tasks / benchmarks.peer_celery.
_ROOT = Path(__file__).resolve().parent.parent

# How long a worker may take to run its first task before we call it failed.
STARTUP_TIMEOUT_S = 30.0


class PeerError(RuntimeError):
    """A peer's worker failed to start, died, or did not finish in time."""


# --------------------------------------------------------------------------- helpers


def _tag(system: str) -> str:
    """A fresh name for one run, so concurrent runs on one Redis never collide."""
    return f"wqsim_peer_{system}_{uuid.uuid4().hex[:10]}"


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=30)


def _delete_matching(client: redis.Redis, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, never KEYS or FLUSH*)."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += client.delete(*batch)
            batch.clear()
    if batch:
        deleted += client.delete(*batch)
    return deleted


def _float_key(client: redis.Redis, key: str) -> float | None:
    value = client.get(key)
    return None if value is None else float(value)


def wait_for(
    what: str,
    done: Callable[[], bool],
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    diagnostics: Callable[[], str] = lambda: "",
    interval_s: float = 0.02,
) -> None:
    """Poll ``done`` until true; raise PeerError on timeout or if the worker dies."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if not alive():
            if done():  # finished just before exiting
                return
            raise PeerError(f"{what}: the worker exited early. {diagnostics()}".strip())
        if time.monotonic() > deadline:
            raise PeerError(f"{what}: not done within {timeout_s:.0f} s. {diagnostics()}".strip())
        time.sleep(interval_s)


def _marker_rate(client: redis.Redis, n: int, start_key: str, end_key: str) -> float:
    t_start = _float_key(client, start_key)
    t_end = _float_key(client, end_key)
    if t_start is None or t_end is None:
        raise PeerError(f"marker missing (start={t_start}, end={t_end})")
    if t_end <= t_start:
        raise PeerError(f"end marker not after start marker ({t_end} <= {t_start})")
    return n / (t_end - t_start)


class _WorkerProcess:
    """A worker subprocess in its own session, its output in a temp file.

    Output goes to a file, not a pipe, so a chatty worker can never block on a
    full pipe; the tail is quoted in errors.  ``stop()`` ends only this
    process's own group (SIGTERM for a warm shutdown, then SIGKILL).
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.argv = argv
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), full_env.get("PYTHONPATH", "")) if p)
        full_env.update(env or {})
        self._log = tempfile.NamedTemporaryFile(prefix="wqsim-peer-", suffix=".log", delete=False)  # noqa: SIM115 - lives as long as the peer
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=str(_ROOT),
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._close_log()
            raise
        log.debug("started worker pid %d: %s", self.proc.pid, " ".join(argv))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, chars: int = 2000) -> str:
        try:
            with open(self._log.name, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - chars))
                text = f.read().decode(errors="replace").strip()
        except OSError:
            return ""
        state = "running" if self.alive() else f"exit code {self.proc.returncode}"
        return f"[worker `{' '.join(self.argv[1:4])}`, {state}] output tail:\n{text}"

    def stop(self, grace_s: float = 5.0) -> None:
        try:
            if self.alive():
                self._signal(signal.SIGTERM)
                try:
                    self.proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    log.warning("worker pid %d ignored SIGTERM for %.0f s; killing", self.proc.pid, grace_s)
            # Kill the group even after a clean exit, in case the worker left children.
            self._signal(signal.SIGKILL)
            self.proc.wait(5)
        finally:
            self._close_log()

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # the group id is the pid (start_new_session)

    def _close_log(self) -> None:
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)

    def __enter__(self) -> _WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _rq_in_process_hygiene() -> Iterator[None]:
    """Let an in-process RQ worker run without printing or keeping our signal handlers.

    ``Worker.work()`` attaches stdout/stderr handlers to ``rq.worker`` and
    ``rq.job`` unless some handler is already in their hierarchy, and installs
    SIGINT/SIGTERM handlers; both are undone afterwards.
    """
    added: list[tuple[logging.Logger, logging.Handler, int, bool]] = []
    for name in ("rq.worker", "rq.job"):
        logger = logging.getLogger(name)
        handler = logging.NullHandler()
        added.append((logger, handler, logger.level, logger.propagate))
        logger.addHandler(handler)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for logger, h, level, propagate in added:
            logger.removeHandler(h)
            logger.setLevel(level)
            logger.propagate = propagate


# RQ's global throttle for group-registry cleaning (SET NX EX), set by worker
# maintenance; removed only if it did not exist before our run.
_RQ_GLOBAL_LOCKS = ("rq:clean_groups",)


def _rq_existing_globals(client: redis.Redis) -> set[str]:
    return {key for key in _RQ_GLOBAL_LOCKS if client.exists(key)}


@functools.lru_cache(maxsize=1)
def _rq_benchmark_worker_class() -> type:
    """``rq.SimpleWorker`` without its remote-control pub/sub listener thread.

    The listener only serves ``rq`` commands (shutdown, stop-job) and is idle
    during a run, so dropping it changes no per-job cost; but after
    ``unsubscribe()`` redis-py's listener thread waits out its 60 s
    ``sleep_time`` and would outlive the call by up to a minute.
    """
    import rq

    class BenchmarkSimpleWorker(rq.SimpleWorker):
        def subscribe(self) -> None:
            self.pubsub_thread = None

    return BenchmarkSimpleWorker


def _cleanup_rq(client: redis.Redis, tag: str, existed: set[str]) -> None:
    """Remove every key of one RQ run: queue, jobs, registries, worker, and our set members.

    Queue name, job ids and worker name all contain ``tag``; RQ's global sets
    ``rq:queues`` and ``rq:workers`` only lose our members; a global lock is
    deleted only if our run created it (``existed`` is the set found before).
    """
    _delete_matching(client, f"*{tag}*")
    for key in _RQ_GLOBAL_LOCKS:
        if key not in existed:
            client.delete(key)
    client.srem("rq:queues", f"rq:queue:{tag}")
    for member in client.smembers("rq:workers"):
        if tag.encode() in member:
            client.srem("rq:workers", member)


# --------------------------------------------------------------------------- throughput


def rq_throughput(url: str, n: int, queue: str | None = None) -> float:
    """RQ: ``n`` no-op jobs drained by one in-process ``SimpleWorker(burst=True)``; tasks/s.

    Jobs are enqueued with ``result_ttl=0`` (nothing kept: the job hash is
    deleted on success) through ``enqueue_many`` (pipelined, 1000 at a time).  Must run in
    the main thread: SimpleWorker enforces the job timeout with SIGALRM.
    Worker logging is set to WARNING, as for the other peers.

    Per job RQ still does far more than a bare pop (measured with RQ 3.0:
    about 25 round trips, 66 Redis commands): LMOVE into an intermediate
    queue, HGETALL the job, MULTI/EXEC pipelines that mark it started (started
    registry, execution record) and finished (status, registries, stats,
    delete), five worker heartbeats (EXPIRE + HSET), and a SIGALRM timer.
    """
    import rq

    if threading.current_thread() is not threading.main_thread():
        raise PeerError("rq_throughput must run in the main thread (SimpleWorker uses SIGALRM)")
    tag = queue or _tag("rq")
    start_key, end_key = f"{tag}:t_start", f"{tag}:t_end"
    client = _client(url)
    rq_globals = _rq_existing_globals(client)
    try:
        q = rq.Queue(tag, connection=client)
        jobs = [rq.Queue.prepare_data(peer_tasks.mark, (url, start_key), job_id=f"{tag}-start", result_ttl=0)]
        jobs += [rq.Queue.prepare_data(peer_tasks.noop, job_id=f"{tag}-{i}", result_ttl=0) for i in range(n)]
        jobs.append(rq.Queue.prepare_data(peer_tasks.mark, (url, end_key), job_id=f"{tag}-end", result_ttl=0))
        for i in range(0, len(jobs), 1000):
            q.enqueue_many(jobs[i : i + 1000])
        log.info("rq: %d jobs enqueued on %s; starting SimpleWorker", len(jobs), tag)
        worker = _rq_benchmark_worker_class()([q], connection=client, name=f"{tag}-worker")
        with _rq_in_process_hygiene():
            worker.work(burst=True, logging_level="WARNING", max_jobs=n + 2)
        if client.get(end_key) is None:
            raise PeerError(f"rq: the burst worker stopped before the end marker ran ({q.count} jobs left)")
        return _marker_rate(client, n, start_key, end_key)
    finally:
        _cleanup_rq(client, tag, rq_globals)
        client.close()


def _celery_publisher(url: str, prefix: str) -> Any:
    from celery import Celery

    from benchmarks import peer_celery

    app = Celery("wqsim_peer_publisher", set_as_current=False)
    app.conf.update(peer_celery.celery_config(url, prefix))
    return app


def _celery_worker(url: str, prefix: str, queue: str) -> _WorkerProcess:
    from benchmarks import peer_celery

    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "benchmarks.peer_celery",
        "worker",
        "--pool=solo",
        "--concurrency=1",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-l",
        "WARNING",
    ]
    return _WorkerProcess(argv, {peer_celery.BROKER_ENV: url, peer_celery.PREFIX_ENV: prefix})


def celery_throughput(url: str, n: int, queue: str | None = None, timeout_s: float = 60.0) -> float:
    """Celery: ``n`` no-op tasks drained by one ``--pool=solo`` worker subprocess; tasks/s.

    Tasks are sent by name with one producer (one LPUSH each) before the worker
    starts; ``ignore_result=True`` and no result backend.  Every kombu key is
    under the prefix ``<queue>:`` and deleted afterwards.  Celery's Redis
    transport emulates acknowledgement: each delivery is also written to the
    ``unacked`` hash and ``unacked_index`` zset (MULTI/EXEC) and removed on
    ack (another MULTI/EXEC): BRPOP plus 8 commands per task.
    """
    from benchmarks import peer_celery

    tag = queue or _tag("celery")
    prefix = f"{tag}:"
    start_key, end_key = f"{prefix}t_start", f"{prefix}t_end"
    client = _client(url)
    app = _celery_publisher(url, prefix)
    worker: _WorkerProcess | None = None
    try:
        with app.producer_or_acquire() as producer:
            send = app.send_task
            send(peer_celery.MARK, (url, start_key), queue=tag, producer=producer)
            for _ in range(n):
                send(peer_celery.NOOP, queue=tag, producer=producer)
            send(peer_celery.MARK, (url, end_key), queue=tag, producer=producer)
        log.info("celery: %d tasks published on %s; starting the solo worker", n + 2, tag)
        worker = _celery_worker(url, prefix, tag)
        wait_for(
            "celery: start marker", lambda: client.exists(start_key) == 1, STARTUP_TIMEOUT_S, worker.alive, worker.tail
        )
        wait_for("celery: end marker", lambda: client.exists(end_key) == 1, timeout_s, worker.alive, worker.tail)
        return _marker_rate(client, n, start_key, end_key)
    finally:
        if worker is not None:
            worker.stop()
        app.close()
        _delete_matching(client, f"{prefix}*")
        client.close()


@functools.lru_cache(maxsize=1)
def _quiet_consumer_class() -> type:
    """Huey's own thread ``Consumer``, minus the process signal handlers.

    ``Consumer.start()`` installs SIGINT/SIGTERM/SIGHUP handlers, which only
    the main thread may do and which a benchmark must not take over; this
    subclass starts the same scheduler and worker threads without them.
    """
    from huey.consumer import Consumer

    class QuietConsumer(Consumer):
        def _set_signal_handlers(self) -> None:
            pass

    return QuietConsumer


def _make_huey(url: str, name: str) -> tuple[Any, dict[str, Any]]:
    from huey import RedisHuey

    huey = RedisHuey(name=name, url=url, results=False)
    tasks = {
        "noop": huey.task(name="noop")(peer_tasks.noop),
        "mark": huey.task(name="mark")(peer_tasks.mark),
        "record_latency": huey.task(name="record_latency")(peer_tasks.record_latency),
    }
    return huey, tasks


@contextlib.contextmanager
def _huey_consumer(huey: Any) -> Iterator[Any]:
    """One consumer with a single worker thread (Huey's defaults otherwise).

    The ``huey`` logger is held at WARNING meanwhile, as RQ's and Celery's
    workers are, so its two INFO lines per task cost nothing.
    """
    huey_logger = logging.getLogger("huey")
    saved_level = huey_logger.level
    if huey_logger.getEffectiveLevel() < logging.WARNING:
        huey_logger.setLevel(logging.WARNING)
    consumer = _quiet_consumer_class()(huey, workers=1, worker_type="thread", shutdown_timeout=10)
    consumer.start()
    try:
        yield consumer
    finally:
        huey_logger.setLevel(saved_level)
        consumer.stop(graceful=True)  # joins the worker and scheduler threads (BRPOP timeout 1 s)
        threads = [t for _, t in consumer.worker_threads] + [consumer.scheduler]
        if any(t.is_alive() for t in threads):
            log.warning("huey: consumer threads still alive after stop (they are daemon threads)")


def _cleanup_huey(huey: Any, client: redis.Redis, name: str) -> None:
    huey.storage.flush_all()
    _delete_matching(client, f"huey.*.{name}*")
    _delete_matching(client, f"{name}:*")
    huey.storage.pool.disconnect()


def huey_throughput(url: str, n: int, name: str | None = None, timeout_s: float = 60.0) -> float:
    """Huey: ``n`` no-op tasks drained by one consumer with one worker thread; tasks/s.

    ``RedisHuey(results=False)`` on its own name; the consumer runs in this
    process as Huey's thread consumer (one worker thread plus Huey's scheduler
    thread), started after the queue is loaded.  Per task Huey does three
    round trips: BRPOP, HMGET of the task's revocation keys, HDEL of its
    revoke key.
    """
    tag = name or _tag("huey")
    start_key, end_key = f"{tag}:t_start", f"{tag}:t_end"
    client = _client(url)
    huey, tasks = _make_huey(url, tag)
    try:
        tasks["mark"](url, start_key)
        noop = tasks["noop"]
        for _ in range(n):
            noop()
        tasks["mark"](url, end_key)
        log.info("huey: %d tasks enqueued on %s; starting the consumer", n + 2, tag)
        with _huey_consumer(huey) as consumer:
            alive = lambda: all(t.is_alive() for _, t in consumer.worker_threads)  # noqa: E731
            wait_for("huey: start marker", lambda: client.exists(start_key) == 1, STARTUP_TIMEOUT_S, alive)
            wait_for(
                "huey: end marker",
                lambda: client.exists(end_key) == 1,
                timeout_s,
                alive,
                lambda: f"{huey.pending_count()} tasks still queued",
            )
        executed = sum(worker.task_count for worker, _ in consumer.worker_threads)
        if executed != n + 2:
            raise PeerError(f"huey: the consumer ran {executed} tasks, expected {n + 2}")
        return _marker_rate(client, n, start_key, end_key)
    finally:
        _cleanup_huey(huey, client, tag)
        client.close()


# Pops up to ARGV[1] ids from the right of KEYS[1] (FIFO with LPUSH) and pushes
# them onto KEYS[2], in one call.  LPUSH in chunks keeps unpack() within Lua's
# C-stack limit for any batch size.
_POP_BATCH_LUA = """
local ids = redis.call('RPOP', KEYS[1], ARGV[1])
if not ids then return {} end
local n = #ids
local i = 1
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('LPUSH', KEYS[2], unpack(ids, i, j))
  i = j + 1
end
return ids
"""

# Removes each id once from KEYS[1].  They were LPUSHed in pop order, so the
# first one is nearest the tail: LREM from the tail (count -1) finds each at once.
_ACK_BATCH_LUA = """
for i = 1, #ARGV do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
end
return #ARGV
"""


# The same acknowledgement, but also writing each task's result to a hash of its own:
# the least per-task state a queue that "writes results back" must keep.
_ACK_BATCH_WITH_RESULTS_LUA = """
for i = 1, #ARGV do
  redis.call('LREM', KEYS[1], -1, ARGV[i])
  redis.call('HSET', KEYS[2] .. ARGV[i], 'status', 'done', 'result', 'null')
end
return #ARGV
"""


def raw_throughput(url: str, n: int, batch: int = 1, prefix: str | None = None, write_results: bool = False) -> float:
    """The ceiling: a bare redis-py consume loop, no lease and no result write-back; tasks/s.

    ``write_results`` (batched only) makes the acknowledgement also write each
    task's result to a hash: not a peer, a yardstick for the price of per-task state.

    ``batch == 1``: ``BLMOVE ready processing RIGHT LEFT 1``, run ``noop()``,
    ``LREM processing 1 id`` (two round trips per task).  ``batch > 1``: one
    Lua call moves up to ``batch`` ids from ready to processing, the no-ops
    run, one Lua call removes them.  Ids are pushed beforehand (pipelined
    LPUSH); throughput is ``n`` over the elapsed time of the consume loop.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    tag = prefix or _tag("raw")
    ready, processing = f"{tag}:ready", f"{tag}:processing"
    client = _client(url)
    try:
        with client.pipeline(transaction=False) as pipe:
            for i in range(0, n, 1000):
                pipe.lpush(ready, *(str(j) for j in range(i, min(i + 1000, n))))
            pipe.execute()
        noop = peer_tasks.noop
        done = 0
        if batch == 1:
            started = time.perf_counter()
            while done < n:
                task_id = client.blmove(ready, processing, 1, "RIGHT", "LEFT")
                if task_id is None:
                    raise PeerError(f"raw: ready list empty after {done} of {n} tasks")
                noop()
                client.lrem(processing, 1, task_id)
                done += 1
            elapsed = time.perf_counter() - started
        else:
            ack_source = _ACK_BATCH_WITH_RESULTS_LUA if write_results else _ACK_BATCH_LUA
            pop = client.register_script(_POP_BATCH_LUA)
            ack = client.register_script(ack_source)
            client.script_load(_POP_BATCH_LUA)  # so the timed loop's first EVALSHA does not miss
            client.script_load(ack_source)
            started = time.perf_counter()
            while done < n:
                ids = pop(keys=[ready, processing], args=[batch])
                if not ids:
                    raise PeerError(f"raw: ready list empty after {done} of {n} tasks")
                for _ in ids:
                    noop()
                ack(keys=[processing, f"{tag}:task:"], args=ids)
                done += len(ids)
            elapsed = time.perf_counter() - started
        return n / elapsed
    finally:
        client.delete(ready, processing)
        if write_results:
            _delete_matching(client, f"{tag}:task:*")
        client.close()


def _delete_matching(client: redis.Redis, pattern: str) -> None:
    batch: list[str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


# --------------------------------------------------------------------------- latency


def _rq_worker(url: str, queue: str) -> _WorkerProcess:
    argv = [
        sys.executable,
        "-m",
        "rq.cli",
        "worker",
        "-u",
        url,
        "-w",
        "rq.worker.SimpleWorker",
        "-n",
        f"{queue}-worker",
        "--logging_level",
        "WARNING",
        queue,
    ]
    return _WorkerProcess(argv)


class _RawLatencyWorker:
    """A thread in ``BLMOVE ready processing RIGHT LEFT 1`` running ``record_latency``.

    Each item is ``"<output key>|<enqueue time>"``; after the task the item is
    removed from processing with LREM.  No lease, no result.
    """

    def __init__(self, url: str, ready: str, processing: str) -> None:
        self.url, self.ready, self.processing = url, ready, processing
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="wqsim-peer-raw-worker", daemon=True)

    def _run(self) -> None:
        client = _client(self.url)
        try:
            while not self.stop_event.is_set():
                item = client.blmove(self.ready, self.processing, 1, "RIGHT", "LEFT")
                if item is None:
                    continue
                key, enqueued = item.decode().rsplit("|", 1)
                peer_tasks.record_latency(self.url, key, float(enqueued))
                client.lrem(self.processing, 1, item)
        except BaseException as exc:  # surfaced through alive()/diagnostics()
            self.error = exc
            log.exception("raw latency worker died")
        finally:
            client.close()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def diagnostics(self) -> str:
        return f"raw worker error: {self.error!r}" if self.error else ""

    def __enter__(self) -> _RawLatencyWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(5)
        if self.thread.is_alive():
            log.warning("raw latency worker still blocked after 5 s (daemon thread)")


def latency_samples(
    system: str,
    url: str,
    count: int = 300,
    spacing_s: float = 0.003,
    prefix: str | None = None,
    idle_s: float = 0.5,
    timeout_s: float = 60.0,
) -> list[float]:
    """Pickup latency (enqueue -> task start, seconds) of an idle worker of ``system``.

    ``system`` is one of :data:`SYSTEMS`.  The worker runs one warm-up task
    (which also proves it started: :class:`PeerError` otherwise), sits idle
    ``idle_s``, then ``count`` tasks are enqueued on a fixed schedule
    ``spacing_s`` apart.  Samples are returned in arrival order.  How each
    library waits while idle is described in the module docstring.

    The worker stays idle between tasks only if its service time is below
    ``spacing_s``.  RQ's (~2-4 ms per job on a 2-core machine) and, under
    load, Celery's are close to the default 3 ms, so they build a backlog and
    the later samples measure queueing: compare the last samples with the
    first, or use a larger ``spacing_s`` (20 ms) for pure pickup latency.
    """
    if system not in SYSTEMS:
        raise ValueError(f"system must be one of {SYSTEMS}, not {system!r}")
    tag = prefix or _tag(system)
    out_key, warm_key = f"{tag}:latency", f"{tag}:warmup"
    client = _client(url)
    rq_globals = _rq_existing_globals(client) if system == "rq" else set()

    def collect(
        enqueue: Callable[[str, float], None], alive: Callable[[], bool], diagnostics: Callable[[], str] = lambda: ""
    ) -> list[float]:
        enqueue(warm_key, time.time())
        wait_for(f"{system}: warm-up task", lambda: client.llen(warm_key) >= 1, STARTUP_TIMEOUT_S, alive, diagnostics)
        time.sleep(idle_s)
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i * spacing_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            enqueue(out_key, time.time())
        wait_for(
            f"{system}: {count} latency samples",
            lambda: client.llen(out_key) >= count,
            timeout_s,
            alive,
            lambda: f"{client.llen(out_key)} arrived. {diagnostics()}",
        )
        return [float(v) for v in client.lrange(out_key, 0, -1)]

    try:
        if system == "raw":
            ready = f"{tag}:ready"
            with _RawLatencyWorker(url, ready, f"{tag}:processing") as worker:
                return collect(lambda key, t: client.lpush(ready, f"{key}|{t!r}"), worker.alive, worker.diagnostics)

        if system == "rq":
            import rq

            q = rq.Queue(tag, connection=client)
            job_ids = (f"{tag}-{i}" for i in itertools.count())  # so cleanup finds leftovers by tag
            with _rq_worker(url, tag) as worker:
                return collect(
                    lambda key, t: q.enqueue(
                        peer_tasks.record_latency, url, key, t, result_ttl=0, job_id=next(job_ids)
                    ),
                    worker.alive,
                    worker.tail,
                )

        if system == "celery":
            from benchmarks import peer_celery

            # Our keys (f"{tag}:...") are under kombu's global prefix too.
            app = _celery_publisher(url, f"{tag}:")
            try:
                with _celery_worker(url, f"{tag}:", tag) as worker, app.producer_or_acquire() as producer:
                    return collect(
                        lambda key, t: app.send_task(
                            peer_celery.RECORD_LATENCY, (url, key, t), queue=tag, producer=producer
                        ),
                        worker.alive,
                        worker.tail,
                    )
            finally:
                app.close()

        # huey
        huey, tasks = _make_huey(url, tag)
        try:
            record = tasks["record_latency"]
            with _huey_consumer(huey) as consumer:
                return collect(
                    lambda key, t: record(url, key, t),
                    lambda: all(t.is_alive() for _, t in consumer.worker_threads),
                )
        finally:
            _cleanup_huey(huey, client, tag)
    finally:
        if system == "rq":
            _cleanup_rq(client, tag, rq_globals)
        _delete_matching(client, f"{tag}:*")
        client.close()
        if system in ("raw", "huey"):  # their tasks ran in this process
            peer_tasks.close_clients()


def quantiles(samples: list[float], qs: tuple[float, ...] = (0.5, 0.99)) -> dict[str, float]:
    """Nearest-rank quantiles, keyed ``"p50"``, ``"p99"``...; empty input raises ValueError."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(1, min(len(ordered), math.ceil(round(q * len(ordered), 9))))
        out[f"p{q * 100:g}"] = ordered[rank - 1]
    return out
