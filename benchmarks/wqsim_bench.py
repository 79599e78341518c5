"""wqsim's side of the benchmark: throughput, idle pickup latency, memory, makespan."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator

import redis

import wqsim
from wqsim import Queue, Retention, Task, Worker, WorkerConfig, WorkerPool, generate

from .peers import wait_for


def _queue(client: redis.Redis, label: str) -> Queue:
    """A fresh queue that keeps every task: the measurements read every task hash
    (benchmarks/retention.py measures retention itself)."""
    q = Queue(client, f"bench-{label}-{uuid.uuid4().hex[:6]}")
    q.set_retention(Retention.keep_everything())
    return q


def _times(q: Queue, fields: tuple[str, ...]) -> Iterator[list[float]]:
    for _, values in q.iter_task_hashes(fields):
        yield [float(v) for v in values]


def throughput(url: str, n: int, batch: int = 1, workers: int = 1, package: bool = False) -> float:
    """No-op tasks/s from the first start to the last finish (start-up excluded).

    One worker runs in this process; more run as a process pool. ``batch`` is
    the claim size, or with ``package`` the work-package size made at creation.
    """
    client = wqsim.connect(url)
    q = _queue(client, f"tp{batch}")
    generate(q, n, kind="noop", package_size=batch if package else None)
    config = WorkerConfig(batch_size=1 if package else batch, lease_s=60)
    try:
        if workers == 1:
            Worker(client, q.name, "bench", config).run()
        else:
            pool = WorkerPool(url, q.name, [f"b{i}" for i in range(workers)], config).start()
            pool.join(600)
        spans = list(_times(q, ("started_at", "finished_at")))
        assert q.counters().get("done") == n, "benchmark run did not finish every task"
        return n / (max(f for _, f in spans) - min(c for c, _ in spans))
    finally:
        q.purge()


def enqueue_rate(url: str, n: int) -> float:
    """Tasks/s written by generate(): hashes plus queue entries, all-or-nothing."""
    client = wqsim.connect(url)
    q = _queue(client, "enq")
    try:
        started = time.perf_counter()
        generate(q, n, kind="noop")
        return n / (time.perf_counter() - started)
    finally:
        q.purge()


def pickup_latencies(
    url: str, count: int = 300, spacing_s: float = 0.003, idle_s: float = 0.5
) -> dict[str, list[float]]:
    """Seconds to handler start for tasks arriving one by one at an idle worker process, measured
    two ways: from the producer's call (``from_call``: the clock read just before ``enqueue``,
    as the peers are measured) and from the task becoming visible in Redis (``from_redis``: the
    task's ``enqueued_at``, Redis's clock inside the enqueue script).

    The schedule is the peers' (peers.latency_samples): one warm-up task, ``idle_s`` of
    quiet, then ``count`` tasks on a fixed schedule ``spacing_s`` apart."""
    client = wqsim.connect(url)
    q = _queue(client, "lat")
    pool = WorkerPool(url, q.name, ["idle"], WorkerConfig(exit_when_drained=False, idle_wait_s=5.0)).start()
    try:

        def alive() -> bool:
            return None in pool.exit_codes().values()

        q.enqueue([Task(id="warm-up", kind="noop")])
        wait_for("wqsim: warm-up task", lambda: q.counters().get("done", 0) >= 1, 30, alive)
        time.sleep(idle_s)
        called: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(count):
            delay = t0 + i * spacing_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            task = Task(id=f"lat{i}", kind="noop")  # an id of the producer's own, as the peers' are
            called[task.id] = time.time()
            q.enqueue([task])
        wait_for(f"wqsim: {count} latency samples", lambda: q.counters().get("done", 0) >= count + 1, 30, alive)
        from_call, from_redis = [], []
        for key, (enqueued, started) in q.iter_task_hashes(("enqueued_at", "started_at")):
            task_id = q.keys.task_id_of(key)
            if task_id in called:
                from_call.append(float(started) - called[task_id])
                from_redis.append(float(started) - float(enqueued))
        return {"from_call": from_call, "from_redis": from_redis}
    finally:
        pool.stop()
        pool.join(10)
        q.purge()


def memory_per_task(url: str, n: int = 100_000) -> dict[str, float]:
    """Bytes of Redis memory per queued and per completed task, and one task hash's MEMORY USAGE."""
    client = wqsim.connect(url)
    q = _queue(client, "mem")

    def used() -> int:
        return int(client.info("memory")["used_memory"])

    try:
        before = used()
        generate(q, n, kind="noop")
        queued = used()
        hash_queued = client.memory_usage(q.keys.task("1"), samples=0)
        Worker(client, q.name, "mem", WorkerConfig(batch_size=100)).run()
        done = used()
        hash_done = client.memory_usage(q.keys.task("1"), samples=0)
        events = client.memory_usage(q.keys.events, samples=0)
        return {
            "queued_bytes_per_task": (queued - before) / n,
            "done_bytes_per_task": (done - before) / n,
            "task_hash_queued_bytes": float(hash_queued),
            "task_hash_done_bytes": float(hash_done),
            "event_stream_bytes_per_task": events / n,
        }
    finally:
        q.purge()


def makespan(
    url: str, tasks: int = 200, duration_ms: float = 20.0, workers: int = 4, batch: int = 1
) -> dict[str, float]:
    """The seed-like sleep workload: measured makespan against sum(durations) / workers."""
    client = wqsim.connect(url)
    q = _queue(client, "mk")
    try:
        # Workers start first and wait, so process start-up is not part of the workload.
        pool = WorkerPool(url, q.name, [f"m{i}" for i in range(workers)], WorkerConfig(batch_size=batch)).start()
        time.sleep(0.5)
        generate(q, tasks, duration_ms=duration_ms)
        pool.join(120)
        spans = list(_times(q, ("started_at", "finished_at")))
        measured = max(f for _, f in spans) - min(s for s, _ in spans)
        ideal = tasks * duration_ms / 1000 / workers
        return {"makespan_s": measured, "ideal_s": ideal, "ratio": measured / ideal}
    finally:
        q.purge()


def percentiles(samples: list[float]) -> dict[str, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50": qs[49], "p95": qs[94], "p99": qs[98], "max": max(samples), "n": len(samples)}
