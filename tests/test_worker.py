"""The worker loop, generator and listener against fakeredis with an injected logger
(the seed's Testing section), and the same behaviour on a real server."""

from __future__ import annotations

import threading
import time

import pytest
from helpers import wait_until

from wqsim import (
    HandlerRegistry,
    Listener,
    Queue,
    Status,
    Worker,
    WorkerConfig,
    audit,
    generate,
    registry,
)
from wqsim.handlers import noop, sleep


def test_generator_logs_the_seed_line_through_an_injected_logger(make_queue, captured_logger):
    logger, handler = captured_logger
    generate(make_queue(), 100, logger=logger)
    assert handler.messages == ["Created 100 work items out of 100"]


@pytest.mark.parametrize("count", [0, -1, 2.5, True])
def test_generator_rejects_a_bad_count(make_queue, count):
    with pytest.raises(ValueError, match="count"):
        generate(make_queue(), count)


def test_worker_performs_every_task_and_reports_through_its_logger(client, queue_name, captured_logger):
    logger, handler = captured_logger
    q = Queue(client, queue_name)
    generate(q, 5, duration_ms=1)
    stats = Worker(client, queue_name, "7", WorkerConfig(idle_wait_s=0.05), logger=logger).run()
    assert stats.done == 5
    assert [m for m in handler.messages if "picked up" in m] == [f"Worker 7 picked up task {i}" for i in range(1, 6)]
    assert handler.messages[-1] == "Worker 7 finished"
    assert all(q.task(str(i)).worker == "7" for i in range(1, 6))
    q.purge()


def test_worker_publishes_one_finished_message_when_no_more_work_can_be_had(
    make_queue, make_worker, client, queue_name
):
    q = make_queue()
    generate(q, 3, duration_ms=0)
    listener = Listener(client, queue_name, ["w1"]).start()
    make_worker("w1").run()
    result = listener.wait(timeout_s=2)
    assert result.finished == ["w1"] and not result.timed_out
    assert result.progress == {"done": 3, "dead": 0}


def test_listener_counts_every_task_of_a_batched_progress_message(make_queue, make_worker, client, queue_name):
    q = make_queue()
    generate(q, 25, duration_ms=0)
    seen: list[tuple[str, str]] = []
    listener = Listener(
        client, queue_name, ["w1"], on_progress=lambda status, task_id: seen.append((status, task_id))
    ).start()
    make_worker("w1", batch_size=10).run()
    result = listener.wait(timeout_s=2)
    assert result.progress == {"done": 25, "dead": 0}
    assert sorted(int(task_id) for _, task_id in seen) == list(range(1, 26))


def idle_waits(worker: Worker, count: int) -> threading.Event:
    """Set once ``worker`` goes back to its idle wait for the ``count``-th time: each time, it has
    been shown an empty queue and decided to wait for more rather than to exit."""
    reached = threading.Event()
    calls = 0
    original = worker.queue.wait_then_claim

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls >= count:
            reached.set()
        return original(*args, **kwargs)

    worker.queue.wait_then_claim = counted  # type: ignore[method-assign]
    return reached


def test_worker_does_not_exit_while_another_worker_still_holds_a_task(make_queue, make_worker):
    """Termination waits for every task to be terminal, not for an empty ready list."""
    q = make_queue()
    generate(q, 1)
    q.claim("other", lease_ms=60_000)
    worker = make_worker("w1")
    waited_again = idle_waits(worker, 3)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert waited_again.wait(5), "the worker never went back to waiting"
    assert thread.is_alive()
    from wqsim import Settlement

    q.settle("other", [Settlement("1", "other#1", "done", "null")], lease_ms=1000)
    thread.join(5)
    assert not thread.is_alive()


def test_unknown_kind_and_malformed_hashes_are_dead_lettered_and_the_rest_complete(make_queue, make_worker):
    q = make_queue()
    generate(q, 10, duration_ms=0)
    k = q.keys
    q.client.hset(
        k.task("unknown"), mapping={"id": "unknown", "kind": "launch_missiles", "payload": "{}", "status": "queued"}
    )
    q.client.hset(k.task("nokind"), mapping={"id": "nokind", "payload": "{}"})
    q.client.hset(
        k.task("badjson"), mapping={"id": "badjson", "kind": "sleep", "payload": "{not json", "status": "queued"}
    )
    q.client.lpush(k.ready, "unknown", "nokind", "badjson", "nohash")
    q.client.hincrby(k.stats, "total", 2)  # 'unknown' and 'badjson' were enqueued "properly"; the others are adopted
    make_worker().run()
    result = audit(q)
    assert (result.done, result.dead, result.lost, result.in_flight) == (10, 4, 0, 0)
    errors = {i: q.client.hget(k.task(i), "error") for i in ("unknown", "nokind", "badjson", "nohash")}
    assert "unknown task kind 'launch_missiles' (registered: noop, sleep)" in errors["unknown"]
    assert "missing field(s): kind" in errors["nokind"]
    assert "not valid JSON" in errors["badjson"]
    assert "does not exist" in errors["nohash"]
    assert set(q.client.lrange(k.dead, 0, -1)) == set(errors)


def test_handler_exception_is_retried_with_backoff_then_dead_lettered(make_queue, client, queue_name):
    q = make_queue()
    calls: list[int] = []
    handlers = HandlerRegistry()

    @handlers.register("flaky")
    def flaky(task):
        calls.append(task.attempt)
        raise RuntimeError("disk on fire")

    generate(q, 1, kind="flaky", max_attempts=3)
    Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, backoff_s=0.01), registry=handlers).run()
    task = q.task("1")
    assert calls == [1, 2, 3]
    assert (task.status, task.error) == (Status.DEAD, "RuntimeError: disk on fire")
    assert [e["event"] for e in q.events()] == ["retry", "retry", "dead"]


def test_handler_that_fails_once_succeeds_on_retry(make_queue, client, queue_name):
    q = make_queue()
    handlers = HandlerRegistry()

    @handlers.register("once")
    def once(task):
        if task.attempt == 1:
            raise TimeoutError("first try")
        return {"attempt": task.attempt}

    generate(q, 1, kind="once")
    Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, backoff_s=0.01), registry=handlers).run()
    assert (q.task("1").status, q.task("1").result) == (Status.DONE, {"attempt": 2})


def test_result_that_is_not_json_is_dead_lettered_not_pickled(make_queue, client, queue_name):
    q = make_queue()
    handlers = HandlerRegistry()
    handlers.register("obj", lambda task: object())
    generate(q, 1, kind="obj")
    Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), registry=handlers).run()
    assert q.task("1").status == Status.DEAD
    assert "not JSON-serialisable" in q.task("1").error


def test_a_stopped_worker_finishes_the_task_in_hand_and_claims_nothing_more(make_queue, client, queue_name):
    q = make_queue()
    started, release = threading.Event(), threading.Event()
    handlers = HandlerRegistry()

    @handlers.register("gated")
    def gated(task):
        started.set()
        assert release.wait(10), "the test never let the task finish"
        return {"id": task.id}

    generate(q, 3, kind="gated")
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), registry=handlers)
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert started.wait(5), "the worker never started a task"
    worker.stop()  # while the first task is in hand
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    result = audit(q)
    assert (result.done, result.queued, result.running) == (1, 2, 0)


def test_a_serving_worker_waits_for_new_work_instead_of_exiting(make_queue, client, queue_name):
    q = make_queue()
    generate(q, 1, duration_ms=0)
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, exit_when_drained=False))
    drained_and_waiting = idle_waits(worker, 2)  # the queue was drained, and the worker waited on past it
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert drained_and_waiting.wait(5)
    generate(q, 1, duration_ms=0)
    assert wait_until(lambda: q.counters().get("done", 0) >= 2, 5)
    assert thread.is_alive() and q.counters()["done"] == 2
    worker.stop()
    thread.join(5)


def test_idle_workers_on_a_drained_queue_sleep_instead_of_waking_each_other(make_queue, client, queue_name):
    """A claim that finds the queue drained wakes nobody: only the call that may have ended the
    last task does. Otherwise two serving workers would pass the wake-up token back and forth,
    thousands of empty claims a second, instead of sleeping idle_wait_s between looks."""
    q = make_queue()
    generate(q, 2, duration_ms=0)
    config = WorkerConfig(idle_wait_s=0.2, exit_when_drained=False)
    workers = [Worker(client, queue_name, f"w{i}", config) for i in (1, 2)]
    looks: list[float] = []  # when worker 1 looked for work while idle
    original = workers[0].queue.wait_then_claim

    def looking(*args: object, **kwargs: object) -> object:
        looks.append(time.monotonic())
        return original(*args, **kwargs)

    workers[0].queue.wait_then_claim = looking  # type: ignore[method-assign]
    threads = [threading.Thread(target=w.run) for w in workers]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: q.counters().get("done", 0) == 2 and len(looks) >= 8, 10)
    finally:
        for w in workers:
            w.stop()
        for thread in threads:
            thread.join(5)
    # Seven looks after the first: each comes after an idle wait of 0.2 s, but for the few that a
    # wake-up cuts short (each worker's last settle wakes one idle worker). Spinning, all seven
    # would come within milliseconds.
    assert looks[7] - looks[0] >= 3 * config.idle_wait_s, [round(t - looks[0], 4) for t in looks[:8]]


def test_listener_that_times_out_names_the_workers_that_did_not_finish(fake_client, queue_name, captured_logger):
    logger, handler = captured_logger
    listener = Listener(fake_client, queue_name, ["1", "2", "3"], logger=logger).start()
    fake_client.publish(f"wqsim:{{{queue_name}}}:finished", "2")
    result = listener.wait(timeout_s=0.3)
    assert result.timed_out and result.finished == ["2"] and result.missing == ["1", "3"]
    assert handler.messages[0] == "Received finished message from worker 2. 1/3 workers finished"
    assert "did not finish: 1, 3" in handler.messages[-1]


def test_listener_subscribed_before_workers_start_misses_no_early_message(fake_client, queue_name, captured_logger):
    logger, handler = captured_logger
    listener = Listener(fake_client, queue_name, 2, logger=logger).start()
    for worker in ("a", "b"):  # published the instant start() returns, before wait() runs
        fake_client.publish(f"wqsim:{{{queue_name}}}:finished", worker)
    result = listener.wait(timeout_s=2)
    assert result.finished == ["a", "b"]
    assert handler.messages[-1] == "All workers finished."


def test_built_in_handlers_are_registered_by_name():
    assert registry.kinds() == ["noop", "sleep"]
    assert registry.get("sleep") is sleep and registry.get("noop") is noop


def test_on_ready_is_called_once_after_the_clock_sync_and_before_the_first_claim(client, make_queue, make_worker):
    """WorkerPool.wait_ready counts these calls: a worker that says ready has not claimed yet, but will next."""
    q = make_queue()
    generate(q, 1, duration_ms=0)
    seen: list[tuple[int, bool]] = []
    worker = make_worker("w1")
    worker._on_ready = lambda: seen.append((q.counters().get("done", 0), q.task("1").status is Status.QUEUED))
    worker.run()
    assert seen == [(0, True)]
    assert q.task("1").status is Status.DONE
