"""Measure a CostProfile on a live Redis: what each step of the real engine costs on this machine.

Each figure comes from running the engine itself, on a scratch queue that is
purged afterwards (nothing else on the server is touched):

- the round trip: raw PINGs on a plain socket, so that no client library's
  time is counted in it;
- Redis's time per script call and per task: ``INFO commandstats`` (the
  EVALSHA line's microseconds) read before and after claiming, settling and
  enqueueing in batches of two sizes, solved for the fixed and per-task parts;
- the worker's own time per call and per task: real runs (``wqsim.run``) of
  no-op tasks on one worker without prefetch (so nothing overlaps), in batches
  of two sizes: the makespan per call minus the round trip and Redis's time;
- the listener's CPU per progress message (it competes for the same cores);
- how long a task takes to start when it finds the worker idle (the pick-up),
  and how much longer than in a busy loop a hand-off takes after a sleeping
  handler (the cold call);
- the overshoot of ``time.sleep``, and how long a worker process takes to be ready.

It takes a few seconds. Run it on an idle machine: a busy one measures its load.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from urllib.parse import urlsplit

import redis

from .. import metrics
from ..config import RunConfig, WorkerConfig
from ..connection import connect, resolve_url
from ..generator import generate
from ..keys import Keys
from ..listener import Listener
from ..names import session_queue_name
from ..pool import WorkerPool
from ..queue import Queue
from ..runner import RunReport, run
from .profile import CostProfile

SMALL, LARGE = 1, 100  # the two batch sizes each per-call and per-task pair is solved from


class CalibrationError(RuntimeError):
    """The server cannot be measured (no INFO commandstats, as on fakeredis)."""


def _evalsha(client: redis.Redis) -> tuple[int, float]:
    """(calls, microseconds) of every script call so far, from INFO commandstats."""
    try:
        stats = client.info("commandstats")
    except redis.ResponseError as exc:
        raise CalibrationError(f"cannot read INFO commandstats: {exc}") from None
    calls, usec = 0, 0.0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        entry = stats.get(name) or {}
        calls += int(entry.get("calls", 0))
        usec += float(entry.get("usec", 0))
    return calls, usec


def _server_s(client: redis.Redis, action: Callable[[], object]) -> tuple[float, int]:
    """Redis's seconds of script time while ``action`` runs, and the script calls it made."""
    calls0, usec0 = _evalsha(client)
    action()
    calls1, usec1 = _evalsha(client)
    return (usec1 - usec0) / 1e6, calls1 - calls0


def _claims(queue: Queue, batch: int, calls: int = 20) -> None:
    for _ in range(calls):
        queue.claim("calibrate", 60_000, batch)


def _run_into(reports: list[RunReport], config: RunConfig, url: str) -> None:
    reports.append(run(config, url=url))


def _split(per_call_small: float, per_call_large: float) -> tuple[float, float]:
    """(fixed, per task) from the cost of one call of SMALL and one of LARGE tasks."""
    per_task = max((per_call_large - per_call_small) / (LARGE - SMALL), 0.0)
    return max(per_call_small - SMALL * per_task, 0.0), per_task


def round_trip_s(url: str, samples: int = 2000) -> float:
    """Median PING round trip on a raw socket (TCP URLs; a unix socket or TLS falls back to redis-py's)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.password or parts.username:
        client = connect(url)
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            client.ping()
            times.append(time.perf_counter() - began)
        return statistics.median(times)
    with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        times = []
        for _ in range(samples):
            began = time.perf_counter()
            sock.sendall(b"PING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                reply += sock.recv(64)
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def sleep_overshoot_s(durations_s: tuple[float, ...] = (0.0, 0.001, 0.01), samples: int = 40) -> float:
    """How much longer than asked ``time.sleep`` lasts, on average (sleep(0) too: timer slack and a wake-up)."""
    over = []
    for d in durations_s:
        for _ in range(samples):
            began = time.perf_counter()
            time.sleep(d)
            over.append(time.perf_counter() - began - d)
    return statistics.fmean(over)


def pickup_s(url: str, queue: str, samples: int = 100, spacing_s: float = 0.003) -> float:
    """Mean time from a task's enqueue (Redis's clock) to its start, for tasks that find the worker idle."""
    q = Queue(connect(url), queue)
    q.hold_open("calibrate")
    pool = WorkerPool(url, queue, ["pickup"], WorkerConfig(exit_when_drained=False, idle_wait_s=1.0)).start()
    try:
        if not pool.wait_ready(30):
            raise CalibrationError("a worker process did not get ready within 30 s")
        for i in range(samples):
            time.sleep(spacing_s)  # the worker is idle again before each task: these are the samples' spacing
            generate(q, 1, 0.0, "noop")
            if i == 0:
                deadline = time.monotonic() + 10
                while q.counters().get("done", 0) < 1 and time.monotonic() < deadline:
                    time.sleep(0.001)
        deadline = time.monotonic() + 30
        while q.counters().get("done", 0) < samples and time.monotonic() < deadline:
            time.sleep(0.01)
        waits = [
            float(started) - float(enqueued)
            for _, (enqueued, started) in q.iter_task_hashes(("enqueued_at", "started_at"))
            if enqueued and started
        ]
    finally:
        pool.stop()
        pool.join(10)
        q.release_hold("calibrate")
        q.purge()
    if len(waits) < samples:
        raise CalibrationError(f"only {len(waits)} of {samples} pick-up samples finished within 30 s")
    return statistics.fmean(waits)


def worker_start_s(url: str, queue: str, samples: int = 3) -> float:
    """Median time from starting a one-process pool to its worker being ready to claim."""
    q = Queue(connect(url), queue)
    times = []
    for _ in range(samples):
        q.hold_open("calibrate")
        pool = WorkerPool(url, queue, ["start"], WorkerConfig(exit_when_drained=False, idle_wait_s=0.05))
        began = time.perf_counter()
        pool.start()
        ready = pool.wait_ready(30)
        times.append(time.perf_counter() - began)
        pool.stop()
        pool.join(10)
        q.release_hold("calibrate")
        if not ready:
            raise CalibrationError("a worker process did not get ready within 30 s")
    q.purge()
    return statistics.median(times)


def listener_message_s(url: str, queue: str, messages: int = 2000) -> float:
    """CPU time the run's listener spends on one progress message (it shares the host's cores)."""
    keys = Keys(queue)
    listener = Listener(connect(url), queue, ["calibrate"]).start()
    spent: list[float] = []

    def listen() -> None:
        began = time.thread_time()
        listener.wait(30, should_stop=lambda: listener.progress["done"] >= messages)
        spent.append(time.thread_time() - began)

    thread = threading.Thread(target=listen, name="wqsim-calibrate-listener")
    thread.start()
    publisher = connect(url).pipeline(transaction=False)
    last = int(time.time() * 1000) + 60_000  # entry ids after any the listener has seen
    for i in range(messages):
        publisher.publish(keys.progress_channel, f"{last}-{i} done {i}")
    publisher.execute()
    thread.join(60)
    if not spent:
        raise CalibrationError("the listener did not receive the calibration's messages within 60 s")
    return spent[0] / messages


def calibrate(url: str | None = None, tasks: int = 2000) -> CostProfile:
    """Measure a CostProfile on the Redis at ``url`` (default: ``$REDIS_URL``, else embedded).

    ``tasks`` no-op tasks are run for each batch size; more gives steadier figures.
    Raises CalibrationError where the server cannot say what it spends (fakeredis).
    """
    url = resolve_url(url)
    client = connect(url)
    _evalsha(client)  # fails early, and clearly, without INFO
    queue = Queue(client, session_queue_name("calibrate"))
    queue.purge()
    reports: list[RunReport] = []
    try:
        rtt = round_trip_s(url)

        # Redis's side: enqueue and claim in SMALL and LARGE batches, then settle what was claimed.
        def enqueue(batch: int) -> Callable[[], object]:
            return lambda: [generate(queue, batch, 0.0, "noop") for _ in range(tasks // batch)]

        per_enqueue = []
        for batch in (SMALL, LARGE):
            seconds, calls = _server_s(client, enqueue(batch))
            per_enqueue.append(seconds / max(calls, 1))
        _enqueue_call, enqueue_task = _split(*per_enqueue)
        per_claim = []
        for batch in (SMALL, LARGE):
            seconds, calls = _server_s(client, partial(_claims, queue, batch))
            per_claim.append(seconds / max(calls, 1))
        claim_call, claim_task = _split(*per_claim)
        queue.purge()

        # The worker's side: real runs (wqsim.run: a worker process, the listener, the reaper) of
        # no-op tasks on one worker without prefetch, so nothing overlaps: the makespan per call less
        # the round trip and Redis's time is what the worker spends itself, per call and per task.
        per_call, own = [], []
        for batch in (SMALL, LARGE):
            config = RunConfig(
                queue=queue.name, tasks=tasks, kind="noop", workers=1, worker=WorkerConfig(batch_size=batch, prefetch=0)
            )
            seconds, calls = _server_s(client, partial(_run_into, reports, config, url))
            report = reports[-1]
            settles = max(math.ceil(tasks / batch), 1)
            server = (seconds - tasks * enqueue_task) / max(calls - 1, 1)  # less generate's one enqueue call
            per_call.append(server)
            own.append(report.makespan_s / settles - rtt - server)
        settle_fixed, per_task_both = _split(*per_call)
        settle_task = max(per_task_both - claim_task, 0.0)
        call_s = statistics.fmean([claim_call, settle_fixed])
        client_call, client_task = _split(*own)
        # A hand-off after a sleeping handler, beside the busy loop's: the cold call.
        config = RunConfig(queue=queue.name, tasks=100, duration_ms=5.0, workers=1, worker=WorkerConfig(prefetch=0))
        report = run(config, url=url)
        handoff = float(metrics.handoff_gaps(report.attempts()).mean())
        hot = client_call + client_task + rtt + call_s + claim_task + settle_task
        cold = max(handoff - hot, 0.0)
        start = worker_start_s(url, queue.name)
        pickup = pickup_s(url, queue.name)
        listener = listener_message_s(url, queue.name)
    finally:
        queue.purge()
    return CostProfile(
        round_trip_s=rtt,
        server_call_s=call_s,
        server_claim_task_s=claim_task,
        server_settle_task_s=settle_task,
        server_enqueue_task_s=enqueue_task,
        client_call_s=client_call,
        client_task_s=client_task,
        sleep_overshoot_s=sleep_overshoot_s(),
        worker_start_s=start,
        pickup_s=pickup,
        cold_call_s=cold,
        listener_message_s=listener,
        cores=os.cpu_count() or 1,
        machine=f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
