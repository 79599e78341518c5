"""Sharded queues: routing by id, dependency components on one shard, audits that add up, sharded workers.

Shards are whole queues, so on one server (fakeredis, or the session's redis-server)
they behave exactly as on a cluster, but for where they live: tests/test_cluster.py
runs them on a real local cluster.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from helpers import wait_until

from wqsim import ChaosConfig, Queue, RunConfig, Settlement, Task, WorkerConfig, generate, run
from wqsim.graph import GraphError
from wqsim.handlers import HandlerRegistry
from wqsim.keys import Keys, shard_name
from wqsim.sharded_worker import ShardedWorker
from wqsim.shards import ShardedQueue, ShardLayoutError, shard_names, shard_of


@pytest.fixture
def sharded(client: redis.Redis, queue_name: str) -> Iterator[ShardedQueue]:
    sq = ShardedQueue(queue_name, tuple(Queue(client, n) for n in shard_names(queue_name, 4)))
    yield sq
    sq.purge()


def shard_ids(sq: ShardedQueue) -> list[set[str]]:
    return [set(q.statuses()) for q in sq]


# -- names ---------------------------------------------------------------------------------


def test_shard_names_carry_their_own_hash_tag_and_can_never_be_a_queue_name():
    assert shard_names("q", 3) == ["q:0", "q:1", "q:2"]
    assert shard_names("q", 1) == ["q"]  # one shard is the queue itself
    assert Keys(shard_name("q", 2)).ready == "wqsim:{q:2}:ready"
    with pytest.raises(ValueError, match="queue name"):
        RunConfig(queue="q:2")  # a user's queue name cannot take a shard's
    for bad in (0, -1, 1025, True, 2.0):
        with pytest.raises(ValueError, match="shards must be"):
            shard_names("q", bad)  # type: ignore[arg-type]


def test_shard_of_is_stable_and_spreads_consecutive_ids_evenly():
    counts = Counter(shard_of(str(i), 6) for i in range(1, 60_001))
    assert set(counts) == set(range(6))
    assert max(counts.values()) / min(counts.values()) < 1.05
    assert shard_of("42", 6) == shard_of("42", 6) == 2  # CRC-32: the same in every process and release


# -- writing -------------------------------------------------------------------------------


def test_generated_tasks_go_to_the_shard_their_id_names_with_ids_unique_across_shards(sharded):
    ids = generate(sharded, 400, duration_ms=0)
    placed = shard_ids(sharded)
    assert sorted(i for part in placed for i in part) == sorted(ids)
    assert all(placed[shard_of(i, 4)] >= {i} for i in ids)
    assert all(len(part) > 60 for part in placed)  # about 100 each


def test_a_dependency_component_goes_to_one_shard_and_runs_there_in_order(sharded):
    tasks = [
        Task(id="a", kind="noop"),
        Task(id="b", kind="noop", depends_on=("a",)),
        Task(id="c", kind="noop", depends_on=("b",)),
        Task(id="x", kind="noop"),  # a component of its own
    ]
    sharded.enqueue(tasks)
    placed = shard_ids(sharded)
    home = shard_of("a", 4)  # the component's smallest id
    assert placed[home] >= {"a", "b", "c"}
    assert "x" in placed[shard_of("x", 4)]


def test_a_prerequisite_outside_the_call_is_refused_before_any_shard_is_written(sharded):
    # A graph is enqueued whole, as on one queue: so no dependency ever crosses two shards.
    sharded.enqueue([Task(id="base", kind="noop")])
    before = shard_ids(sharded)
    many = [Task(id=str(i), kind="noop") for i in range(20)]  # parts for every shard, written first if unchecked
    with pytest.raises(GraphError, match="unknown task 'base'"):
        sharded.enqueue([*many, Task(id="later", kind="noop", depends_on=("base",))])
    assert shard_ids(sharded) == before


# -- reading -------------------------------------------------------------------------------


def test_the_sharded_audit_adds_up_its_shards_and_counts_tasks_no_shard_remembers(sharded):
    generate(sharded, 40, duration_ms=0)
    for q in sharded:
        claim = q.claim("w1", 5000, 100)
        q.settle("w1", [Settlement(t.id, claim.lease, "done", "null", 1.0, 2.0) for t in claim.tasks], 5000)
    result = sharded.audit()
    assert [a.done for a in result.shards] == [len(part) for part in shard_ids(sharded)]
    assert (result.total.generated, result.total.done, result.clean) == (40, 40, True)
    sharded.queues[1].purge()  # a shard's keys all gone (a failed node without replica)
    gone = result.shards[1].done
    after = sharded.audit(expected=40)
    assert (after.total.lost, after.total.generated, after.clean) == (gone, 40, False)
    assert sharded.counters()["done"] == 40 - gone


# -- workers -------------------------------------------------------------------------------


@pytest.mark.real_redis
def test_a_sharded_worker_serves_every_shard_and_runs_one_task_at_a_time(redis_url, queue_name):
    sq = ShardedQueue.connect(redis_url, queue_name, 3)
    running, most = 0, 0
    lock = threading.Lock()
    registry = HandlerRegistry()

    @registry.register("probe")
    def probe(task: Task) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.002)
        with lock:
            running -= 1

    try:
        sq.enqueue([Task(id=str(i), kind="probe") for i in range(60)])
        worker = ShardedWorker(
            redis_url, queue_name, 3, "w1", WorkerConfig(exit_when_drained=True, idle_wait_s=0.05), registry=registry
        )
        stats = worker.run()
        assert (stats.done, most) == (60, 1)
        assert all(a.done == len(part) > 0 for a, part in zip(sq.audit().shards, shard_ids(sq), strict=True))
    finally:
        sq.purge()


@pytest.mark.real_redis
@pytest.mark.slow
def test_a_sharded_run_with_chaos_ends_with_a_clean_audit_across_shards(redis_url, queue_name):
    config = RunConfig(
        queue=queue_name,
        tasks=300,
        duration_ms=2,
        workers=3,
        shards=4,
        max_attempts=10,
        worker=WorkerConfig(lease_s=0.5),
        chaos=ChaosConfig(seed=5, fail_p=0.05, crash_p=0.01, hang_p=0.01, hang_s=1.0, straggler_p=0.05),
    )
    sq = ShardedQueue.connect(redis_url, queue_name, 4)
    try:
        report = run(config, url=redis_url)
        assert report.ok and report.audit.done + report.audit.dead == 300, report.summary()
        assert (report.audit.lost, report.audit.completed_twice) == (0, 0)
        assert len(report.attempts().task_id.unique()) == 300  # every shard's attempts, ids unique
        assert sq.audit().clean and all(a.generated > 0 for a in sq.audit().shards)
    finally:
        sq.purge()


def test_shards_are_refused_with_an_arrival_rate_and_by_the_simulation():
    with pytest.raises(ValueError, match="arrival_rate cannot be combined with shards"):
        RunConfig(shards=2, arrival_rate=10)
    from wqsim.sim import simulate

    with pytest.raises(ValueError, match="drop shards"):
        simulate(RunConfig(shards=2, tasks=5))


def test_enqueueing_records_the_number_of_shards_on_every_shard_and_another_number_is_refused(sharded, client):
    generate(sharded, 10, duration_ms=0)
    assert [q.recorded_shards() for q in sharded] == [4, 4, 4, 4]
    sharded.check_layout()  # the same number: nothing to say
    for other in (3, 6):
        wrong = ShardedQueue(sharded.name, tuple(Queue(client, n) for n in shard_names(sharded.name, other)))
        with pytest.raises(ShardLayoutError, match=rf"is in 4 shards \(.*\), not {other}: give --shards 4"):
            wrong.check_layout()


# -- the per-queue roles, on every shard -----------------------------------------------------


@pytest.mark.real_redis
def test_status_reap_and_listen_with_shards_cover_every_shard(redis_url, queue_name):
    import subprocess
    import sys

    def wqsim(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "wqsim", *args, "--redis-url", redis_url, "--queue", queue_name]
        return subprocess.run([*command, "--shards", "3"], capture_output=True, text=True, timeout=timeout)

    sq = ShardedQueue.connect(redis_url, queue_name, 3)
    generate(sq, 30, duration_ms=0)
    stuck = sq.queues[1]
    claim = stuck.claim("gone", 1, 2)  # a worker that died holding two tasks of shard 1: a 1 ms lease
    assert len(claim.tasks) == 2
    deadline = max(score for _, score in stuck.client.zrange(stuck.keys.inflight, 0, -1, withscores=True))

    def redis_now() -> float:
        seconds, micros = stuck.client.time()
        return seconds + micros / 1e6

    assert wait_until(lambda: redis_now() > deadline, timeout_s=5)  # expired: the reaper's to return

    status = wqsim("status")
    assert status.returncode == 0, status.stderr
    assert all(f"shard {q.name!r}" in status.stdout for q in sq)
    assert "audit, all shards: generated 30" in status.stdout and "lost 0" in status.stdout
    reaped = wqsim("reap", "--once")
    assert reaped.returncode == 0 and "Returned 2 task(s), dead-lettered 0" in reaped.stderr, reaped.stderr
    assert stuck.lengths()["inflight"] == 0

    listen = [sys.executable, "-m", "wqsim", "listen", "--redis-url", redis_url, "--queue", queue_name]
    listener = subprocess.Popen(
        [*listen, "--shards", "3", "--workers", "1", "--timeout-s", "60"], stderr=subprocess.PIPE, text=True
    )
    assert listener.stderr is not None
    first = listener.stderr.readline()  # logged once every shard's listener is subscribed
    assert "Listening on queue" in first and "(3 shards)" in first, first
    worked = wqsim("work", "--workers", "1", "--once", "--id-prefix", "w", "-q")
    assert worked.returncode == 0, worked.stderr[-2000:]
    _, rest = listener.communicate(timeout=60)
    assert listener.returncode == 0, rest[-2000:]
    assert "30 done" in rest  # every shard's outcomes, counted by one printer

    missing = wqsim("status", "--expected", "31")  # one task more than any shard remembers: lost
    assert missing.returncode == 1 and "lost 1" in missing.stdout
    assert "1 task(s) of queue" in missing.stderr and "\n" not in missing.stderr.strip()
    sq.purge()


@pytest.mark.real_redis
def test_roles_given_another_number_of_shards_than_the_queue_has_are_refused_in_one_line(redis_url, queue_name):
    import subprocess
    import sys

    def wqsim(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "wqsim", *args, "--redis-url", redis_url, "--queue", queue_name]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    made = wqsim("generate", "--tasks", "20", "--shards", "3")
    assert made.returncode == 0, made.stderr
    for role in (["work", "--once"], ["reap", "--once"], ["status"], ["generate", "--tasks", "1"]):
        for shards in ("1", "2"):
            refused = wqsim(*role, "--shards", shards)
            assert refused.returncode == 2, (role, shards, refused.stderr)
            line = refused.stderr.strip()
            assert "\n" not in line and "is in 3 shards" in line and "give --shards 3" in line, line
    sq = ShardedQueue.connect(redis_url, queue_name, 3)
    assert sq.counters().get("total") == 20 and sq.counters().get("done", 0) == 0  # nothing was touched
    assert sq.home is not None and sq.home.split_into() == 3
    # Starting afresh in another layout purges the old one's shards too: none is left unserved.
    fresh = wqsim("generate", "--tasks", "5", "--shards", "2", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert sq.queues[2].lengths()["ready"] == 0 and sq.queues[2].recorded_shards() is None
    assert sq.home.split_into() == 2
    assert ShardedQueue.connect(redis_url, queue_name, 2).counters().get("total") == 5
    assert wqsim("status", "--shards", "2").returncode == 0
    # And back to one queue: its tasks are not where a worker of shards would look.
    assert wqsim("generate", "--tasks", "4", "--fresh").returncode == 0
    assert sq.home.split_into() is None and sq.queues[0].lengths()["ready"] == 0
    unsharded = wqsim("work", "--once", "--shards", "2")
    assert unsharded.returncode == 2 and "holds its tasks unsharded" in unsharded.stderr, unsharded.stderr
    sq.home.purge()
