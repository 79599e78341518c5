"""One time base: a worker's timestamps are on Redis's clock, whatever its host's clock says."""

from __future__ import annotations

import time

import pytest
import redis

from wqsim import Queue, Settlement, Task, Worker, WorkerConfig
from wqsim.clocks import ServerClock


@pytest.mark.parametrize("skew_s", [5.0, -5.0])
def test_a_worker_whose_clock_is_5_s_off_still_records_true_queue_waits_and_run_times(client, queue_name, skew_s):
    """enqueued_at is stamped by Redis; started_at and finished_at by the worker, corrected by
    its offset to Redis's TIME. Uncorrected, every queue wait would be off by the skew."""
    q = Queue(client, queue_name)
    q.enqueue([Task(id=str(i), kind="sleep", payload={"duration_ms": 50}) for i in range(3)])
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), clock=lambda: time.time() + skew_s)
    began = time.perf_counter()
    worker.run()
    elapsed_s = time.perf_counter() - began
    assert worker.clock.offset == pytest.approx(-skew_s, abs=0.5)
    for i in range(3):
        task = q.task(str(i))
        assert task.enqueued_at is not None and task.started_at is not None and task.finished_at is not None
        waited_s, ran_s = task.started_at - task.enqueued_at, task.finished_at - task.started_at
        assert 0 <= waited_s <= elapsed_s + 0.05  # within the worker's run, not 5 s off
        assert 0.05 <= ran_s <= elapsed_s  # at least the task's sleep, measured by one clock


def test_a_server_clock_keeps_the_offset_of_its_shortest_round_trip(fake_client):
    """A stalled TIME round trip (a busy host) would put the estimate far off: the shortest one is kept."""
    slow, fast = [100.0, 100.4], [200.0, 200.002]  # the local clock before and after each TIME
    readings = iter(slow + fast + slow * (ServerClock.SAMPLES - 2))
    clock = ServerClock(lambda: next(readings))
    server_now = float(fake_client.time()[0])
    offset = clock.sync(fake_client)
    assert offset == pytest.approx(server_now - 200.0, abs=1.5)  # the fast sample's, not the slow one's 100.0


def test_a_server_clock_never_runs_behind_redis():
    """The offset is the upper bound of what one round trip allows: stamps taken after Redis
    stamped a cause (a task's enqueued_at) are never earlier than it, however long the trip."""

    class Server:
        def __init__(self) -> None:
            self.now = 1000.0  # Redis runs 1000 s ahead of the local clock below

        def time(self) -> tuple[int, int]:
            return int(self.now), round(self.now % 1 * 1e6)

    local = iter([0.0, 0.004] * ServerClock.SAMPLES)  # TIME answered 4 ms after the call began
    server = Server()
    server.now = 1000.0 + 0.001  # read 1 ms into the 4 ms trip: the midpoint would put Redis 1 ms behind
    clock = ServerClock(lambda: next(local))
    clock.sync(server)  # type: ignore[arg-type]
    assert 1000.0 <= clock.offset <= 1000.0 + 0.004  # ahead by at most the round trip, never behind


def test_a_settle_never_records_an_attempt_finishing_after_redis_records_it(client, queue_name):
    """The last guard of causality across clocks: times from a clock that runs ahead are clamped."""
    q = Queue(client, queue_name)
    q.enqueue([Task(id="1", kind="noop")])
    claim = q.claim("w1", lease_ms=5000)
    ahead = time.time() + 60
    q.settle("w1", [Settlement("1", claim.lease, "done", "null", ahead - 1, ahead)], lease_ms=5000)
    now = float(client.time()[0]) + 1
    task = q.task("1")
    assert task.started_at is not None and task.finished_at is not None
    assert task.started_at <= task.finished_at <= now


def test_a_worker_measures_its_clock_offset_again_after_a_reconnect(fake_client, queue_name):
    local = [time.time()]
    worker = Worker(fake_client, queue_name, "w1", clock=lambda: local[0])
    first = worker.clock.sync(fake_client)
    local[0] -= 5  # the host's clock is stepped back while Redis is unreachable
    outcomes = iter([redis.ConnectionError("down"), "ok"])

    def flaky() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert worker._with_redis(flaky) == "ok"
    assert worker.clock.offset == pytest.approx(first + 5, abs=1.0)
