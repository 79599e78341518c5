"""Measure a CostProfile on a live Redis: what each step of the real engine costs on this machine.

Each figure comes from running the engine itself, on a scratch queue that is
purged afterwards (nothing else on the server is touched):

- Redis's time per script call and per task: ``INFO commandstats`` (the
  EVALSHA line's microseconds) read before and after claiming, settling and
  enqueueing in batches of two sizes, solved for the fixed and per-task parts;
- the worker's own time per call and per task: real runs (``wqsim.run``) of
  no-op tasks on one worker without prefetch (so nothing overlaps), in batches
  of two sizes, and the worker process's CPU time in them; the round trip is
  what the makespan per call leaves beside Redis's and the worker's time;
- the listener's CPU per progress message (it competes for the same cores);
- what waking costs: real one-worker runs of sleep 0 and 10 ms tasks, without
  and with prefetch, give the overshoot of a short and a long sleep and how
  much longer a hand-off takes after a long one (the worker's warm-up, and
  Redis's wake-up when it was idle as long);
- how long a task takes to start when it finds the worker idle (the pick-up),
  and how long a worker process takes to be ready.

It takes a few seconds. Run it on an idle machine: a busy one measures its load.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial

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
from ..runner import run
from .profile import LONG_SLEEP_S, SHORT_SLEEP_S, CostProfile

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


def _work(pool: WorkerPool) -> None:
    """Run a pool until its queue is drained (the pool reaps its workers: their CPU time becomes ours)."""
    pool.start()
    if not pool.join(120):
        pool.terminate()
        raise CalibrationError("the calibration's worker did not finish its tasks within 120 s")


def _split(per_call_small: float, per_call_large: float) -> tuple[float, float]:
    """(fixed, per task) from the cost of one call of SMALL and one of LARGE tasks."""
    per_task = max((per_call_large - per_call_small) / (LARGE - SMALL), 0.0)
    return max(per_call_small - SMALL * per_task, 0.0), per_task


def sleeping(url: str, queue: str, tasks: int = 100) -> dict[str, float]:
    """Real one-worker runs that show what sleeping and waking cost.

    The overshoot of a sleep of SHORT_SLEEP_S and LONG_SLEEP_S: batches of 100
    tasks, where each task's whole cost shows (the sleep's own overrun, and the
    worker's code running slower on a CPU that idled meanwhile), less the sleep
    and the per-task cost of a busy worker. The hand-off after a long sleep,
    beside a no-op's, with and without prefetch: with prefetch the reply is
    waiting when the handler returns, so what the sleep adds is the worker's
    own warm-up; without, Redis has idled as long and adds its wake-up on top.
    Means, not medians: a makespan is a sum.
    """
    found: dict[str, float] = {}
    for sleep_s in (SHORT_SLEEP_S, LONG_SLEEP_S):
        config = RunConfig(
            queue=queue,
            tasks=tasks,
            duration_ms=sleep_s * 1000,
            workers=1,
            worker=WorkerConfig(prefetch=0, batch_size=tasks),
        )
        found[f"per task {sleep_s}"] = run(config, url=url).makespan_s / tasks - sleep_s
    for sleep_s, kind in ((0.0, "noop"), (LONG_SLEEP_S, "sleep")):
        for prefetch in (0, 2):
            config = RunConfig(
                queue=queue,
                tasks=tasks if sleep_s else 5 * tasks,
                kind=kind,
                duration_ms=sleep_s * 1000,
                workers=1,
                worker=WorkerConfig(prefetch=prefetch),
            )
            df = run(config, url=url).attempts()
            found[f"handoff {kind} prefetch {prefetch}"] = float(metrics.handoff_gaps(df).mean())
    return found


def pickup_s(url: str, queue: str, samples: int = 50, spacing_s: float = 0.010) -> float:
    """Mean time from a task's enqueue (Redis's clock) to its start, for tasks that find the worker idle
    (for ``spacing_s``: long enough for its CPU to have gone cold, as between Poisson arrivals)."""
    q = Queue(connect(url, queue=queue), queue)
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
    q = Queue(connect(url, queue=queue), queue)
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
    listener = Listener(connect(url, queue=queue), queue, ["calibrate"]).start()
    spent: list[float] = []

    def listen() -> None:
        began = time.thread_time()
        listener.wait(30, should_stop=lambda: listener.progress["done"] >= messages)
        spent.append(time.thread_time() - began)

    thread = threading.Thread(target=listen, name="wqsim-calibrate-listener")
    thread.start()
    publisher = connect(url, queue=queue).pipeline(transaction=False)
    last = int(time.time() * 1000) + 60_000  # entry ids after any the listener has seen
    for i in range(messages):
        publisher.publish(keys.progress_channel, f"{last}-{i} done {i}")
    publisher.execute()
    thread.join(60)
    if not spent:
        raise CalibrationError("the listener did not receive the calibration's messages within 60 s")
    return spent[0] / messages


def calibrate(url: str | None = None, tasks: int = 2000, queue_name: str | None = None) -> CostProfile:
    """Measure a CostProfile on the Redis at ``url`` (default: ``$REDIS_URL``, else embedded).

    ``tasks`` no-op tasks are run for each batch size (ten times as many in batches), and the
    other measurements scale with it; more gives steadier figures, 500 a quicker look.
    ``queue_name``: the scratch queue (default: one of this session's own). On a Redis
    Cluster its slot decides which master is measured (``wqsim.sim.cluster`` measures each).
    Raises CalibrationError where the server cannot say what it spends (fakeredis).
    """
    url = resolve_url(url)
    name = queue_name or session_queue_name("calibrate")
    client = connect(url, queue=name)  # on a cluster: the master of the queue's slot, whose INFO is read
    _evalsha(client)  # fails early, and clearly, without INFO
    queue = Queue(client, name)
    queue.purge()
    try:
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

        # The worker's side: one worker process on no-op tasks without prefetch, so nothing overlaps;
        # Redis's time is read around the work alone (an audit's or a generator's scripts would count
        # too). The worker process's CPU time (the pool reaps it: it counts among this process's
        # children) gives its cost per call and per task; the makespan per call less that and Redis's
        # time is the round trip: the network and the wake-ups of both processes, which prefetch can
        # hide and CPU cannot. (The listener's share is measured on its own, below.)
        per_call, cpu, latency = [], [], []
        for batch, count in ((SMALL, tasks), (LARGE, 10 * tasks)):  # each about as long: the process's own
            # start-up CPU is then a small share of either
            generate(queue, count, 0.0, "noop")
            pool = WorkerPool(url, queue.name, ["calibrate"], WorkerConfig(batch_size=batch, prefetch=0))
            before = os.times()
            seconds, calls = _server_s(client, partial(_work, pool))
            after = os.times()
            makespan = metrics.makespan(metrics.attempts(queue))
            queue.purge()
            settles = max(math.ceil(count / batch), 1)
            server = seconds / max(calls, 1)
            worker_cpu = after.children_user + after.children_system - before.children_user - before.children_system
            per_call.append(server)
            cpu.append(worker_cpu / settles)
            latency.append(makespan / settles - server - worker_cpu / settles)
        settle_fixed, per_task_both = _split(*per_call)
        settle_task = max(per_task_both - claim_task, 0.0)
        call_s = statistics.fmean([claim_call, settle_fixed])
        client_call, client_task = _split(*cpu)
        rtt = max(latency[0], 0.0)
        woken = sleeping(url, queue.name, tasks=max(tasks // 20, 20))
        cold_cpu = max(woken["handoff sleep prefetch 2"] - woken["handoff noop prefetch 2"], 0.0)
        redis_wake = max(woken["handoff sleep prefetch 0"] - woken["handoff noop prefetch 0"] - cold_cpu, 0.0)
        start = worker_start_s(url, queue.name)
        pickup = pickup_s(url, queue.name, samples=max(tasks // 40, 20))
        listener = listener_message_s(url, queue.name, messages=max(tasks, 200))
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
        sleep_overshoot_s=max(woken[f"per task {SHORT_SLEEP_S}"] - client_task, 0.0),
        sleep_overshoot_long_s=max(woken[f"per task {LONG_SLEEP_S}"] - client_task, 0.0),
        worker_start_s=start,
        pickup_s=pickup,
        cold_cpu_s=cold_cpu,
        redis_wake_s=redis_wake,
        listener_message_s=listener,
        cores=os.cpu_count() or 1,
        machine=f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    )
