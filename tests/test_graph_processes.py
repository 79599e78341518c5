"""Random graphs on a real redis-server with several worker processes, with and without a chaos killer.

Every verdict comes from Redis: the task hashes (status, times, who cancelled
whom) and the event stream. A task may only be queued (``enqueued_at``) after
all of its prerequisites finished, and may only start after it was queued.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from helpers import running, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wqsim import Killer, Queue, Reaper, Task, WorkerConfig, WorkerPool, audit, connect

pytestmark = pytest.mark.real_redis


# A task that always fails, with a built-in kind (so forked workers know it and
# the global handler registry is left alone): sleep refuses a negative duration.
FAILING = {"duration_ms": -1}


def random_dag(
    n: int, edge_p: float, fail_p: float, seed: int, duration_ms: float, fail_from: float = 0.0
) -> list[Task]:
    """Task i may depend on any earlier task (so no cycles), with probability ``edge_p``, at most 4.
    Tasks from the fraction ``fail_from`` of the way on fail, with probability ``fail_p``."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        earlier = [f"g{j}" for j in range(i) if rng.random() < edge_p]
        prereqs = tuple(rng.sample(earlier, min(len(earlier), 4)))
        if rng.random() < fail_p and i >= fail_from * n:
            tasks.append(Task(id=f"g{i}", kind="sleep", payload=FAILING, depends_on=prereqs, max_attempts=1))
        else:
            tasks.append(
                Task(
                    id=f"g{i}", kind="sleep", payload={"duration_ms": duration_ms}, depends_on=prereqs, max_attempts=20
                )
            )
    return tasks


def expected_statuses(tasks: list[Task]) -> dict[str, str]:
    """The model: failing tasks end dead; a task with a failed or cancelled ancestor, cancelled; others, done."""
    out: dict[str, str] = {}
    for task in tasks:  # ids are in a topological order by construction
        if any(out[p] != "done" for p in task.depends_on):
            out[task.id] = "cancelled"
        else:
            out[task.id] = "dead" if task.payload is FAILING else "done"
    return out


def check_graph_run(q: Queue, tasks: list[Task]) -> None:
    fields = ("status", "enqueued_at", "started_at", "finished_at", "cancelled_by", "error")
    hashes = {q.keys.task_id_of(k): dict(zip(fields, v, strict=False)) for k, v in q.iter_task_hashes(fields)}
    expected = expected_statuses(tasks)
    assert {i: h["status"] for i, h in hashes.items()} == expected
    by_id = {t.id: t for t in tasks}
    for task in tasks:
        h = hashes[task.id]
        if h["status"] == "cancelled":
            assert h["error"].startswith("cancelled: prerequisite")
            assert expected[h["cancelled_by"]] == "dead"  # the failed ancestor it names really failed
            continue
        if h["status"] != "done":
            continue
        queued_at, started_at = float(h["enqueued_at"]), float(h["started_at"])
        assert started_at >= queued_at
        for p in by_id[task.id].depends_on:
            assert queued_at >= float(hashes[p]["finished_at"]), f"{task.id} released before {p} finished"
    done_events = Counter(i for e in q.events() if e["event"] == "done" for i in e["id"].split(" "))
    assert {i: c for i, c in done_events.items() if c != 1} == {}
    assert set(done_events) == {i for i, s in expected.items() if s == "done"}
    result = audit(q)
    assert result.clean, result.summary()
    assert (result.done, result.dead, result.cancelled) == tuple(
        Counter(expected.values())[s] for s in ("done", "dead", "cancelled")
    )


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 200),
    edge_p=st.sampled_from([0.0, 0.02, 0.1, 0.5]),
    fail_p=st.sampled_from([0.0, 0.05]),
    seed=st.integers(0, 2**16),
)
def test_random_graphs_run_in_dependency_order_each_task_done_once_or_cancelled_with_a_reason(
    redis_url, real_client, n, edge_p, fail_p, seed
):
    q = Queue(real_client, f"graph{seed}x{n}")
    try:
        tasks = random_dag(n, edge_p, fail_p, seed, duration_ms=0)
        q.enqueue(tasks)
        pool = WorkerPool(redis_url, q.name, ["1", "2", "3"], WorkerConfig(batch_size=2, idle_wait_s=0.05))
        with running(pool):
            assert pool.join(60), f"workers still running: {pool.exit_codes()}"
        check_graph_run(q, tasks)
    finally:
        q.purge()


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16))
def test_random_graphs_under_the_chaos_killer_lose_duplicate_and_release_early_no_dependent(
    redis_url, real_client, seed
):
    q = Queue(real_client, f"graphchaos{seed}")
    try:
        # Failures only in the last quarter, so cancellations cannot end the run before the killer strikes.
        tasks = random_dag(200, edge_p=0.05, fail_p=0.05, seed=seed, duration_ms=10, fail_from=0.75)
        q.enqueue(tasks)
        reaper = Reaper(Queue(connect(redis_url), q.name), interval_s=0.05).start()
        pool = WorkerPool(
            redis_url, q.name, ["1", "2", "3"], WorkerConfig(lease_s=0.3, idle_wait_s=0.05), restart_crashed=True
        )
        killer = Killer(pool, seed, until=Queue(connect(redis_url), q.name).drained, kills=10**6, pause_s=(0.1, 0.3))
        with running(pool, reaper):
            killer.start()
            assert wait_until(q.drained, timeout_s=120, interval_s=0.05), audit(q).summary()
            killer.stop()
            assert pool.join(30), f"workers still running: {pool.exit_codes()}"
        assert killer.error is None, repr(killer.error)
        assert len(killer.kills) >= 1, "the killer never struck: the test would pass vacuously"
        check_graph_run(q, tasks)
    finally:
        q.purge()
