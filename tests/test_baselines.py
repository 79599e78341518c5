"""The teaching baselines break where they are meant to: the naive loop loses a killed worker's
task, the unfenced queue records a hung worker's late result; wqsim, given the same, does neither."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from helpers import done_count, wait_until

from wqsim import HandlerRegistry, Killer, Queue, Reaper, Status, Worker, WorkerConfig, audit, baselines, generate

pytestmark = pytest.mark.real_redis


@pytest.fixture
def name(real_client: redis.Redis) -> Iterator[str]:
    """A baseline name of the test's own; its keys are deleted afterwards."""
    found = "b" + uuid.uuid4().hex[:12]
    yield found
    baselines.purge(real_client, found)


def test_keys_live_under_the_baseline_prefix_and_a_bad_name_is_refused():
    assert baselines.key("demo", "ready") == "wqsim-baseline:{demo}:ready"
    with pytest.raises(ValueError, match="baseline name"):
        baselines.key("a b", "ready")


def test_the_naive_loop_runs_every_task_once_when_nothing_goes_wrong(real_client, name):
    baselines.enqueue(real_client, name, 5, duration_ms=1)
    assert baselines.work_naive(real_client, name, "w1", idle_s=0.05) == 5
    assert baselines.outcomes(real_client, name) == baselines.Outcomes(5, 5, 0, 0, 0, 0)
    assert real_client.hget(baselines.key(name, "task:3"), "result") == '{"slept_ms":1}'


def test_the_naive_loop_loses_a_task_whose_worker_is_sigkilled_mid_task(real_client, redis_url, name):
    baselines.enqueue(real_client, name, 1, duration_ms=60_000)
    pool = baselines.NaivePool(redis_url, name, ["w1"], idle_s=0.05).start()
    try:
        # The worker marks the task running before its handler starts: kill it once Redis says so.
        assert wait_until(lambda: real_client.hget(baselines.key(name, "task:1"), "status") == "running", 10)
        assert pool.kill("w1") is not None
        assert pool.join(10), "the replacement worker should find nothing to pop and exit"
    finally:
        for worker in pool.pids():
            pool.kill(worker)
    assert pool.restarts == 1
    assert baselines.outcomes(real_client, name) == baselines.Outcomes(1, 0, 0, 0, 1, 0)
    assert real_client.hget(baselines.key(name, "task:1"), "status") == "running"  # forever: nothing returns it


def hang_once_registry(hung: threading.Event, rescued: threading.Event) -> HandlerRegistry:
    """A kind whose first attempt hangs past its lease until the test says the rescuer has finished."""
    handlers = HandlerRegistry()

    @handlers.register("hang_once")
    def hang_once(task):
        if task.attempt == 1:
            hung.set()
            assert rescued.wait(10), "the rescuer never finished"
        return {"attempt": task.attempt, "by": task.worker}

    return handlers


def test_without_fencing_a_hung_workers_late_result_completes_the_task_twice(real_client, name):
    hung, rescued = threading.Event(), threading.Event()
    handlers = hang_once_registry(hung, rescued)
    baselines.enqueue(real_client, name, 1, kind="hang_once")
    late = threading.Thread(target=baselines.work_unfenced, args=(real_client, name, "hung", handlers, 100))
    late.start()
    try:
        assert hung.wait(5), "the hung worker never claimed the task"
        # The rescuer waits out the 100 ms lease, reaps the task, runs attempt 2 and completes it.
        assert baselines.work_unfenced(real_client, name, "rescuer", handlers, lease_ms=100) == 1
    finally:
        rescued.set()  # only now does the hung worker come back with its late result
        late.join(5)
    assert not late.is_alive()
    assert real_client.lrange(baselines.key(name, "done"), 0, -1) == ["1", "1"]
    assert baselines.outcomes(real_client, name) == baselines.Outcomes(1, 1, 0, 0, 0, 1)
    # And the late result overwrote the good one.
    assert real_client.hget(baselines.key(name, "task:1"), "result") == '{"attempt":1,"by":"hung"}'


def test_wqsims_fenced_settle_rejects_the_same_late_result(real_client, queue_name):
    hung, rescued = threading.Event(), threading.Event()
    handlers = hang_once_registry(hung, rescued)
    q = Queue(real_client, queue_name)
    generate(q, 1, kind="hang_once", max_attempts=3)
    cfg = WorkerConfig(lease_s=0.1, idle_wait_s=0.02)
    reaper = Reaper(Queue(real_client, queue_name), interval_s=0.02).start()
    late = Worker(
        real_client, queue_name, "hung", WorkerConfig(lease_s=0.1, idle_wait_s=0.02, heartbeat=False), registry=handlers
    )
    thread = threading.Thread(target=late.run)
    thread.start()
    try:
        assert hung.wait(5), "the hung worker never claimed the task"
        Worker(real_client, queue_name, "rescuer", cfg, registry=handlers).run()
    finally:
        rescued.set()
        thread.join(5)
        reaper.stop()
    assert late.stats.rejected == 1
    assert (q.task("1").status, q.task("1").result["by"], done_count(q, "1")) == (Status.DONE, "rescuer", 1)
    assert audit(q).completed_twice == 0


def test_outcomes_counts_done_waiting_leased_lost_and_twice_from_redis_state(real_client, name):
    baselines.enqueue(real_client, name, 5, duration_ms=0)
    first = baselines.claim_unfenced(real_client, name, "a", lease_ms=60_000)
    second = baselines.claim_unfenced(real_client, name, "b", lease_ms=60_000)
    lost = baselines.claim_unfenced(real_client, name, "c", lease_ms=60_000)
    assert first and second and lost
    baselines.complete_unfenced(real_client, name, first, "a", "1")
    baselines.complete_unfenced(real_client, name, second, "b", "2")
    baselines.complete_unfenced(real_client, name, second, "late", "2")
    real_client.srem(baselines.key(name, "claimed"), lost)  # as if its claim had never been recorded
    assert baselines.outcomes(real_client, name) == baselines.Outcomes(
        total=5, done=2, waiting=2, leased=0, lost=1, completed_twice=1
    )
    assert baselines.outcomes(real_client, name).summary() == "2 of 5 done, 1 lost, 1 completed twice"


def test_the_killer_draws_the_same_victims_from_the_same_seed_and_stops_after_its_kills():
    class Pool:  # a pool whose every kill is at once replaced by a new process
        def __init__(self) -> None:
            self.killed: list[str] = []
            self.next_pid = 100

        def pids(self) -> dict[str, int]:
            self.next_pid += 3
            return {"a": self.next_pid, "b": self.next_pid + 1, "c": self.next_pid + 2}

        def kill(self, worker_id: str) -> int | None:
            self.killed.append(worker_id)
            return self.pids()[worker_id]

    runs = []
    for _ in range(2):
        pool = Pool()
        killer = Killer(pool, seed=3, until=lambda: False, kills=6, pause_s=(0.0, 0.001)).start()
        assert wait_until(lambda k=killer: len(k.kills) == 6, 5)
        assert len(killer.stop()) == 6  # and no more
        runs.append(pool.killed)
    assert runs[0] == runs[1] and len(runs[0]) == 6 and len(set(runs[0])) > 1
