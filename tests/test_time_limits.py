"""Per-task time limits: a worker default, a kind's own, a task's own; heartbeats never extend one.

A task over its limit is recorded as a failed attempt whose error names the
limit, then retried or dead-lettered by the usual policy. In process mode the
worker process is ended and replaced; in thread mode the attempt is recorded
on time and whatever the handler returns later is ignored.
"""

from __future__ import annotations

import threading

import pytest
from helpers import running, wait_until

from wqsim import (
    HandlerRegistry,
    Queue,
    Reaper,
    Status,
    Task,
    Worker,
    WorkerConfig,
    WorkerPool,
    audit,
    connect,
    generate,
)
from wqsim.handlers import sleep


def test_task_time_limits_must_be_positive_and_finite():
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="task_timeout_s must be a positive, finite number"):
            WorkerConfig(task_timeout_s=bad)
        with pytest.raises(ValueError, match="timeout_s of kind 'slow' must be a positive, finite number"):
            HandlerRegistry().register("slow", sleep, timeout_s=bad)
    WorkerConfig(task_timeout_s=None)  # no limit at all is allowed


def test_a_task_with_a_bad_time_limit_is_refused_and_nothing_is_enqueued(make_queue):
    q = make_queue()
    with pytest.raises(ValueError, match="timeout_s of task 2 must be a positive, finite number"):
        q.enqueue([Task("1", "noop"), Task("2", "noop", timeout_s=float("nan"))])
    assert q.counters() == {}


def test_a_task_keeps_its_own_time_limit_in_its_hash(make_queue):
    q = make_queue()
    q.enqueue([Task("1", "noop", timeout_s=2.5), Task("2", "noop")])
    assert (q.task("1").timeout_s, q.task("2").timeout_s) == (2.5, None)


def blocking_registry(release: threading.Event) -> HandlerRegistry:
    """'block' waits for ``release`` (with a kind limit of 0.2 s); 'quick' returns at once."""
    registry = HandlerRegistry()
    registry.register("block", lambda task: release.wait(30) and "late", timeout_s=0.2)
    registry.register("quick", lambda task: "ok")
    return registry


def test_in_thread_mode_an_overrun_is_recorded_on_time_and_what_the_handler_returns_later_is_ignored(
    client, make_queue, queue_name
):
    q = make_queue()
    q.enqueue([Task("slow", "block", max_attempts=1), Task("fast", "quick")])
    release = threading.Event()
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), registry=blocking_registry(release))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        # Recorded while the handler still blocks: the watchdog did it, not the loop.
        assert wait_until(lambda: q.task("slow").status is Status.DEAD, 10)
        assert not release.is_set()
    finally:
        release.set()
        thread.join(10)
    slow = q.task("slow")
    assert slow.error == "TimeLimitExceeded: task slow ran past its time limit of 0.2 s (attempt 1)"
    assert slow.result is None  # the late "late" was never recorded
    assert q.task("fast").status is Status.DONE
    assert worker.stats.timed_out == 1 and worker.stats.rejected == 0
    assert audit(q).clean


def test_a_tasks_own_limit_overrides_its_kinds_which_overrides_the_workers(client, make_queue, queue_name):
    q = make_queue()
    q.enqueue([Task("own", "block", max_attempts=1, timeout_s=0.1)])
    release = threading.Event()
    worker = Worker(
        client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, task_timeout_s=60), registry=blocking_registry(release)
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: q.task("own").status is Status.DEAD, 10)
    finally:
        release.set()
        thread.join(10)
    assert "its time limit of 0.1 s" in q.task("own").error


@pytest.mark.real_redis
@pytest.mark.slow
def test_a_10_s_task_with_a_1_s_limit_fails_within_2_s_is_retried_and_dead_lettered_while_the_others_serve(
    redis_url, queue_name
):
    q = Queue(connect(redis_url), queue_name)
    q.enqueue([Task("long", "sleep", {"duration_ms": 10_000}, max_attempts=2, timeout_s=1.0)])
    generate(q, 200, duration_ms=20)
    # The lease (0.6 s) is renewed by heartbeats; they must not carry the task past its limit.
    config = WorkerConfig(lease_s=0.6, idle_wait_s=0.05, backoff_s=0.01)
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.1).start()
    pool = WorkerPool(redis_url, queue_name, ["a", "b"], config)
    with running(pool, reaper):
        assert wait_until(q.drained, 60), audit(q).summary()
        assert pool.join(30)
    long = q.task("long")
    assert long.status is Status.DEAD and long.attempt == 2
    assert long.error == "TimeLimitExceeded: task long ran past its time limit of 1 s (attempt 2)"
    failures = [e for e in q.events() if e["id"] == "long"]
    assert [e["event"] for e in failures] == ["retry", "dead"]
    for event in failures:
        assert float(event["at"]) - float(event["started"]) < 2.0  # recorded within 2 s of its start
    assert pool.restarts >= 1  # an overrun ends its worker process; a replacement takes over while work is left
    result = audit(q)
    assert result.clean and (result.done, result.dead, result.completed_twice) == (200, 1, 0), result.summary()
    q.purge()


def test_a_handler_returning_while_the_watchdog_records_its_overrun_sends_no_late_result(
    client, make_queue, queue_name
):
    """The watchdog's record reaches Redis before the loop hears of it: a handler that returns in
    between must not have its result sent (it would be rejected as late). CI caught this once."""
    q = make_queue()
    q.enqueue([Task("slow", "block", max_attempts=1)])
    release, recorded = threading.Event(), threading.Event()
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), registry=blocking_registry(release))
    real_settle = worker._side.settle

    def settle_then_return_the_handler(*args, **kwargs):  # the window: recorded in Redis, not yet in the worker
        result = real_settle(*args, **kwargs)
        release.set()
        recorded.wait(0.3)  # the loop gets this long to send a late result, if it would
        return result

    worker._side.settle = settle_then_return_the_handler
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert wait_until(release.is_set, 10)
    recorded.set()
    thread.join(10)
    assert q.task("slow").status is Status.DEAD
    assert worker.stats.timed_out == 1 and worker.stats.rejected == 0
