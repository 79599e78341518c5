"""The seed's Scaling section: work packages, batch claims, heartbeats, round trips."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest
import redis
from helpers import wait_until

from wqsim import Queue, Reaper, Settlement, Status, Task, WorkerConfig, WorkerPool, audit, connect, generate


def commands_sent(client: redis.Redis, action) -> dict[str, int]:
    """Run ``action``; return the top-level commands the client sent, as {command: calls}.

    The client's sends are counted at the connection (each send is one round trip).
    """
    sent: list[str] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(b"".join(command) if isinstance(command, list) else command)
        return original(self, command, check_health)

    with mock.patch.object(redis.connection.AbstractConnection, "send_packed_command", counting):
        action()
    assert len(sent) == 1, f"expected one round trip, got {len(sent)}"
    names: dict[str, int] = {}
    # Parse the RESP arrays in the one send: each command is "*<n>\r\n$<len>\r\n<NAME>...".
    data = sent[0]
    for chunk in data.split(b"*")[1:]:
        parts = chunk.split(b"\r\n")
        if len(parts) > 2 and parts[1].startswith(b"$") and parts[0].isdigit():
            name = parts[2].decode().lower()
            if name.isalpha():
                names[name] = names.get(name, 0) + 1
    return names


@pytest.mark.real_redis
def test_a_package_claim_is_one_lua_call(real_client, queue_name):
    q = Queue(real_client, queue_name)
    generate(q, 100, kind="noop", package_size=100)
    q.claim("warm-up", lease_ms=1, count=0)  # loads the script once, outside the measurement
    claims = []
    assert commands_sent(real_client, lambda: claims.append(q.claim("w1", lease_ms=5000))) == {"evalsha": 1}
    assert len(claims[0].tasks) == 100
    q.purge()


@pytest.mark.real_redis
def test_settling_a_whole_package_and_claiming_the_next_is_one_lua_call(real_client, queue_name):
    q = Queue(real_client, queue_name)
    generate(q, 200, kind="noop", package_size=100)
    first = q.claim("w1", lease_ms=5000)
    q.settle("warm-up", [], lease_ms=1)  # loads the script once, outside the measurement
    outcomes = [Settlement(t.id, first.lease, "done", "null", 1.0, 2.0) for t in first.tasks]
    replies = []
    sent = commands_sent(real_client, lambda: replies.append(q.settle("w1", outcomes, lease_ms=5000, claim_next=1)))
    assert sent == {"evalsha": 1}
    assert replies[0].rejected == [] and len(replies[0].tasks) == 100
    assert q.counters()["done"] == 100
    q.purge()


@pytest.mark.real_redis
def test_enqueueing_one_chunk_is_a_single_script_call(real_client, queue_name):
    q = Queue(real_client, queue_name)
    from wqsim import make_tasks

    q.enqueue(make_tasks(["warm-up"], kind="noop"))  # the producer's connection opens, loading the scripts
    sent = commands_sent(real_client, lambda: q.enqueue(make_tasks(["a", "b", "c"], kind="noop")))
    assert sent == {"evalsha": 1}  # atomic by itself: no MULTI, no read-back of a refusal field
    assert q.counters()["total"] == 4
    q.purge()


@pytest.mark.real_redis
def test_enqueueing_many_tasks_is_one_round_trip(real_client, queue_name):
    q = Queue(real_client, queue_name)
    q.allocate_ids(1)  # the id counter is one INCRBY before the enqueue proper
    ids = [str(i) for i in range(2, 12_002)]
    from wqsim import make_tasks
    from wqsim.scripts import full_source

    tasks = make_tasks(ids, kind="noop")
    real_client.script_load(full_source("enqueue"))  # as after any earlier enqueue on this server
    sent = commands_sent(real_client, lambda: q.enqueue(tasks, chunk=5000))
    # three chunks and the duplicate-id check's read-and-clear, in one MULTI/EXEC: one round trip
    assert sent == {"multi": 1, "evalsha": 3, "hget": 1, "hdel": 1, "exec": 1}
    assert q.counters()["total"] == 12_000
    q.purge()


def test_batch_claims_run_every_task_in_fewer_round_trips(make_queue, make_worker):
    q = make_queue()
    generate(q, 95, duration_ms=0)
    worker = make_worker(batch_size=10, prefetch=0)
    calls: list[str] = []
    for name in ("claim", "settle"):
        original = getattr(worker.queue, name)
        setattr(worker.queue, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    worker.run()
    result = audit(q)
    assert result.clean and result.done == 95
    # One claim, then each settle records a batch and claims the next: ten settles for 95 tasks.
    assert calls == ["claim"] + ["settle"] * 10


@pytest.mark.parametrize("batch_size", [1, 7])
def test_a_prefetching_worker_sends_results_and_its_next_request_together(make_queue, make_worker, batch_size):
    q = make_queue()
    generate(q, 50, duration_ms=0)
    worker = make_worker(batch_size=batch_size, prefetch=1, prefetch_below_s=10.0)  # always "short"
    calls: list[str] = []
    for name in ("claim", "settle", "claim_nowait", "settle_nowait"):
        original = getattr(worker.queue, name)
        setattr(worker.queue, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    worker.run()
    result = audit(q)
    assert result.clean and result.done == 50 and result.executions == 50
    assert calls[:2] == ["claim", "claim_nowait"]  # the first batch, and at once a request for the next
    # Every later round trip overlaps with work; only at the very end, with nothing left
    # to claim ahead, may the last results go with a plain (waiting) settle.
    assert "settle" not in calls[:-1]
    assert calls.count("settle_nowait") + calls.count("settle") >= -(-50 // batch_size)


def test_a_worker_does_not_hold_long_tasks_in_reserve_that_an_idle_worker_could_start(make_queue, make_worker):
    q = make_queue()
    # Two long tasks: after the first claim the backlog (1) does not outnumber the
    # claims in flight (1), so claiming ahead could leave another worker idle.
    q.enqueue([Task(id=i, kind="sleep", payload={"duration_ms": 5}) for i in ("a", "b")])
    worker = make_worker(prefetch=2, prefetch_below_s=0.002)
    calls: list[str] = []
    for name in ("claim", "settle", "claim_nowait", "settle_nowait"):
        original = getattr(worker.queue, name)
        setattr(worker.queue, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    worker.run()
    assert audit(q).clean
    assert calls == ["claim", "settle", "settle"]  # each task claimed only once the worker is free


def test_claims_report_the_backlog_and_the_claims_in_flight(make_queue):
    q = make_queue()
    generate(q, 10, kind="noop")
    first = q.claim("w1", lease_ms=10_000, count=3)
    second = q.claim("w2", lease_ms=10_000, count=3)
    assert (first.backlog, first.claims_in_flight) == (7, 1)
    assert (second.backlog, second.claims_in_flight) == (4, 2)


def test_a_deeper_prefetch_keeps_more_requests_in_flight_and_still_loses_nothing(make_queue, make_worker):
    q = make_queue()
    generate(q, 60, duration_ms=0)
    worker = make_worker(prefetch=3, prefetch_below_s=10.0)  # always "short": a loaded machine must not change the plan
    calls: list[str] = []
    original = worker.queue.claim_nowait
    worker.queue.claim_nowait = lambda *a, **k: (calls.append("claim_nowait"), original(*a, **k))[1]
    worker.run()
    result = audit(q)
    assert result.clean and result.done == 60 and result.executions == 60
    assert calls == ["claim_nowait"] * 3  # three requests in flight from the start, then settles keep it so


def test_a_settle_that_claims_more_renews_the_emptied_lease_instead_of_making_one(make_queue):
    q = make_queue()
    generate(q, 2)
    first = q.claim("w1", lease_ms=5000)
    second = q.settle("w1", [Settlement("1", first.lease, "done", "null")], lease_ms=5000, claim_next=1)
    assert second.lease == first.lease and [t.id for t in second.tasks] == ["2"]
    assert q.client.smembers(q.keys.held(first.lease)) == {"2"}
    last = q.settle("w1", [Settlement("2", first.lease, "done", "null")], lease_ms=5000, claim_next=1)
    assert last.tasks == [] and last.drained
    assert not q.client.exists(q.keys.lease(first.lease), q.keys.held(first.lease))
    assert q.client.zcard(q.keys.inflight) == 0


def test_a_worker_runs_a_packaged_queue_to_completion(make_queue, make_worker):
    q = make_queue()
    generate(q, 25, duration_ms=0, package_size=10)
    make_worker().run()
    result = audit(q)
    assert result.clean and result.done == 25 and q.counters()["leases"] == 3  # one lease per package


@pytest.mark.real_redis
@pytest.mark.slow
def test_a_killed_workers_package_returns_only_its_unfinished_tasks(redis_url, queue_name):
    q = Queue(connect(redis_url), queue_name)
    generate(q, 10, duration_ms=100, package_size=10, max_attempts=3)
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.05).start()
    config = WorkerConfig(lease_s=0.5, idle_wait_s=0.05)
    doomed = WorkerPool(redis_url, queue_name, ["doomed"], config, restart_crashed=False).start()
    deadline = time.time() + 10
    while q.counters().get("done", 0) < 3 and time.time() < deadline:
        time.sleep(0.005)
    doomed.kill("doomed")
    doomed.join(5)
    done_before = {str(i) for i in range(1, 11) if q.task(str(i)).status == Status.DONE}
    assert 3 <= len(done_before) < 10
    rescuer = WorkerPool(redis_url, queue_name, ["rescuer"], config).start()
    assert rescuer.join(30)
    reaper.stop()
    for i in range(1, 11):
        task = q.task(str(i))
        expected = ("doomed", 1) if str(i) in done_before else ("rescuer", 2)
        assert (task.status, task.worker, task.attempt) == (Status.DONE, *expected)
    result = audit(q)
    assert result.clean and result.done == 10 and result.expired == 10 - len(done_before)
    assert result.executions == 10 + (10 - len(done_before))  # only unfinished tasks ran twice
    q.purge()


def test_a_heartbeat_keeps_a_package_alive_past_its_lease(client, queue_name):
    q = Queue(client, queue_name)
    # 1.5 s of work under a 0.5 s lease, pinged every 0.05 s: a heartbeat thread held up for a few
    # pings by a busy machine (the suite runs four processes on two cores) still renews in time.
    generate(q, 6, duration_ms=250, package_size=6, max_attempts=1)
    reaper = Reaper(Queue(client, queue_name), interval_s=0.02).start()
    from wqsim import Worker

    worker = Worker(client, queue_name, "w1", WorkerConfig(lease_s=0.5, ping_interval_s=0.05, idle_wait_s=0.02))
    worker.run()
    reaper.stop()
    result = audit(q)
    assert result.clean and result.done == 6 and result.expired == 0 and result.executions == 6
    q.purge()


@pytest.mark.parametrize(("lease_s", "ping_s"), [(5, 10), (1, 1)])
def test_lease_must_exceed_the_ping_interval(lease_s, ping_s):
    with pytest.raises(ValueError, match=rf"lease_s must be longer than ping_interval_s \(got {lease_s} <= {ping_s}\)"):
        WorkerConfig(lease_s=lease_s, ping_interval_s=ping_s)


def test_a_prefetching_worker_stops_claiming_ahead_once_the_backlog_runs_short(make_queue, make_worker):
    q = make_queue()
    generate(q, 23, duration_ms=3)
    for other in ("x", "y", "z"):  # three other workers, each holding a task: three claims in flight
        q.claim(other, lease_ms=60_000)
    worker = make_worker(prefetch=2, prefetch_below_s=0.002, idle_wait_s=0.01, exit_when_drained=False)
    calls: list[str] = []
    for name in ("claim", "settle", "claim_nowait", "settle_nowait"):
        original = getattr(worker.queue, name)
        setattr(worker.queue, name, lambda *a, _o=original, _n=name, **k: (calls.append(_n), _o(*a, **k))[1])
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        assert wait_until(lambda: worker.stats.done == 20 and q.counters().get("done") == 20, 30)
    finally:
        worker.stop()
        runner.join(10)
    assert "claim_nowait" in calls  # a long backlog: claiming ahead cannot starve anyone
    # The tail: no more backlog than claims in flight, so each task is claimed only once the worker is free.
    work = [c for c in calls[1:] if c != "claim"]  # without the idle worker's empty claims at the end
    assert work[-3:] == ["settle"] * 3, calls


@pytest.mark.real_redis
def test_a_workers_claims_made_ahead_hold_an_ordinary_lease_renewed_by_its_heartbeat(real_client, queue_name):
    """A worker that dies holding claims made ahead loses them after one lease, like any other."""
    from wqsim import Worker

    q = Queue(real_client, queue_name)
    generate(q, 40, duration_ms=20)  # long tasks, and a backlog: the worker claims ahead
    worker = Worker(real_client, queue_name, "w1", WorkerConfig(lease_s=5.0, prefetch=2, ping_interval_s=0.05))
    thread = threading.Thread(target=worker.run)
    thread.start()
    longest_ms, most_at_once = 0, 0
    while thread.is_alive():  # a sample every 2 ms; each claim is held for 20 ms or more
        ttls = [real_client.pttl(key) for key in real_client.scan_iter(match=q.keys.lease("*"))]
        longest_ms = max([longest_ms, *ttls])
        most_at_once = max(most_at_once, len(ttls))
        thread.join(0.002)
    thread.join()
    assert most_at_once >= 2, "the worker never held a claim made ahead: nothing was exercised"
    assert 0 < longest_ms <= 5000
    assert q.counters()["done"] == 40
    q.purge()
