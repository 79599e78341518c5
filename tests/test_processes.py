"""Real worker processes against a real redis-server: SIGKILL chaos, a Redis restart, the CLI.

Every verdict is read back from Redis (task hashes, the events stream, the
audit), never from wall-clock timings, so a slow or noisy machine makes these
tests slower, not flaky.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from helpers import running, shut_down, wait_until

from wqsim import (
    ChaosConfig,
    Killer,
    Listener,
    Queue,
    Reaper,
    RedisServer,
    Settlement,
    Status,
    WorkerConfig,
    WorkerPool,
    audit,
    connect,
    generate,
)

pytestmark = pytest.mark.real_redis

WORKER_IDS = ["1", "2", "3"]
AOF_ARGS = ("--appendonly", "yes", "--appendfsync", "always")


# -- helpers ----------------------------------------------------------------------


def done_events_per_id(q: Queue) -> Counter[str]:
    """A 'done' entry lists every task one settle call recorded, space-separated."""
    return Counter(i for e in q.events() if e["event"] == "done" for i in e["id"].split(" "))


def task_fields(q: Queue, *fields: str) -> dict[str, list[str | None]]:
    """{task id: [values of fields]} for every task hash of the queue."""
    return {key.rsplit(":", 1)[1]: values for key, values in q.iter_task_hashes(fields)}


def assert_every_task_done_exactly_once(q: Queue, n: int) -> None:
    """From Redis state alone: each hash done, exactly one ``done`` event per id."""
    expected_ids = {str(i) for i in range(1, n + 1)}
    fields = task_fields(q, "status")
    assert set(fields) == expected_ids
    not_done = {i: v for i, v in fields.items() if v != [Status.DONE.value]}
    assert not_done == {}, f"{len(not_done)} task(s) not done exactly once, e.g. {list(not_done.items())[:5]}"
    per_id = done_events_per_id(q)
    assert set(per_id) == expected_ids
    assert {i: c for i, c in per_id.items() if c != 1} == {}
    counters = q.counters()
    assert (counters.get("total"), counters.get("done"), counters.get("dead", 0)) == (n, n, 0)


@pytest.fixture
def queue(real_client: redis.Redis, queue_name: str) -> Iterator[Queue]:
    q = Queue(real_client, queue_name)
    yield q
    q.purge()


# -- 1. the seed scenario with real processes -----------------------------------------


def test_three_worker_processes_do_1000_tasks_each_exactly_once_and_each_reports_finished_once(
    redis_url, queue, queue_name
):
    generate(queue, 1000, duration_ms=1)
    listener = Listener(connect(redis_url), queue_name, WORKER_IDS).start()  # subscribed before any worker runs
    pool = WorkerPool(redis_url, queue_name, WORKER_IDS, WorkerConfig(idle_wait_s=0.1), mode="process")
    with running(pool):
        heard = listener.wait(timeout_s=120)
        assert pool.join(30)

    assert not heard.timed_out and heard.missing == []
    assert sorted(heard.finished) == WORKER_IDS  # exactly one finished message per worker
    assert heard.progress == {"done": 1000, "dead": 0}
    assert pool.exit_codes() == {w: 0 for w in WORKER_IDS} and pool.restarts == 0

    assert_every_task_done_exactly_once(queue, 1000)
    assert {e["event"] for e in queue.events()} == {"done"}  # nothing expired, rejected or dropped
    assert len({e["worker"] for e in queue.events()}) >= 2  # the work really was shared
    result = audit(queue)
    assert result.clean
    assert (result.done, result.lost, result.completed_twice, result.executions, result.completions) == (
        1000,
        0,
        0,
        1000,
        1000,
    )


# -- 2. chaos: SIGKILL a random worker every 100-300 ms -----------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_chaos_killer_loses_no_task_and_completes_none_twice(redis_url, queue, queue_name, seed, capsys):
    n = 2000
    # 2000 x 4 ms of sleeping over 3 workers is at least ~2.7 s, so the killer gets many turns.
    generate(queue, n, duration_ms=4, max_attempts=20)
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.05).start()
    pool = WorkerPool(
        redis_url,
        queue_name,
        WORKER_IDS,
        WorkerConfig(lease_s=0.3, idle_wait_s=0.05),
        mode="process",
        restart_crashed=True,
    )
    killer = Killer(pool, seed, until=Queue(connect(redis_url), queue_name).drained, kills=10**6, pause_s=(0.1, 0.3))
    with running(pool, reaper):
        killer.start()
        assert wait_until(queue.drained, timeout_s=120, interval_s=0.05), audit(queue).summary()
        killer.stop()
        assert pool.join(30), f"workers still running: {pool.exit_codes()}"

    result = audit(queue)
    with capsys.disabled():  # the audit figures belong in CI's log, pass or fail
        print(
            f"\nchaos seed {seed}: {len(killer.kills)} SIGKILLs, {pool.restarts} replacements, "
            f"{result.duplicate_executions} duplicate executions, {result.expired} leases expired, "
            f"{result.rejected} late results rejected\n  audit: {result.summary()}"
        )
    assert killer.error is None, repr(killer.error)
    assert len(killer.kills) >= 5, "the killer barely ran: the test would pass vacuously"
    assert pool.restarts >= len(killer.kills) - 1  # only a kill landing as the queue drains goes unreplaced
    assert result.expired >= 1  # killed workers really held tasks, and the reaper returned them
    assert (result.lost, result.completed_twice) == (0, 0), (result.lost_ids[:10], result.twice_ids[:10])
    assert (result.generated, result.done, result.dead, result.in_flight) == (n, n, 0, 0)
    assert result.clean
    assert result.executions >= result.completions == n
    assert_every_task_done_exactly_once(queue, n)


# -- 3. Redis stopped and restarted mid-run ---------------------------------------------


@pytest.mark.slow
def test_workers_reconnect_after_an_aof_redis_restart_and_the_run_completes_with_a_clean_audit(tmp_path, queue_name):
    n = 500
    server = RedisServer(dir=str(tmp_path), extra_args=AOF_ARGS).start()
    restarted: RedisServer | None = None
    try:
        url, port = server.url, server.port
        client = connect(url)
        # RedisServer passes "--appendonly no" before extra_args: the later one must win.
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        q = Queue(client, queue_name)
        generate(q, n, duration_ms=10, max_attempts=20)

        reaper = Reaper(Queue(connect(url), queue_name), interval_s=0.05).start()
        config = WorkerConfig(lease_s=0.5, idle_wait_s=0.05, reconnect_s=30)
        pool = WorkerPool(url, queue_name, WORKER_IDS, config, mode="process", restart_crashed=False)
        with running(pool, reaper):
            assert wait_until(lambda: q.counters().get("done", 0) >= 100, timeout_s=60)
            done_before_stop = q.counters()["done"]
            client.close()
            server.stop()  # SIGTERM
            time.sleep(1.0)
            assert sorted(pool.pids()) == WORKER_IDS  # every worker rode out the outage

            restarted = RedisServer(port=port, dir=str(tmp_path), extra_args=AOF_ARGS).start()
            client = connect(url)
            q = Queue(client, queue_name)
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            counters = q.counters()
            assert counters["total"] == n  # the queue survived the restart (AOF)
            assert done_before_stop <= counters.get("done", 0) < n  # nothing recorded was lost; the stop was mid-run

            assert wait_until(q.drained, timeout_s=60, interval_s=0.05), audit(q).summary()
            assert pool.join(30), f"workers still running: {pool.exit_codes()}"

        assert pool.exit_codes() == {w: 0 for w in WORKER_IDS}  # reconnected, not crashed
        result = audit(q)
        print(f"\nRedis restart: {result.summary()}; {result.expired} leases expired, {result.rejected} rejected")
        assert (result.lost, result.completed_twice) == (0, 0), (result.lost_ids[:10], result.twice_ids[:10])
        assert (result.generated, result.done, result.dead, result.in_flight) == (n, n, 0, 0)
        assert result.clean
        assert_every_task_done_exactly_once(q, n)
        client.close()
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


# -- 4. a worker SIGKILLed while holding a long task -----------------------------------------


@pytest.mark.slow
def test_task_of_a_sigkilled_worker_is_reaped_once_and_completed_by_another_and_the_dead_worker_cannot_record_it(
    redis_url, queue, queue_name
):
    (task_id,) = generate(queue, 1, duration_ms=500, max_attempts=3)
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.05).start()
    config = WorkerConfig(lease_s=1.5, idle_wait_s=0.05)
    pool = WorkerPool(redis_url, queue_name, ["1", "2"], config, mode="process", restart_crashed=False)
    with running(pool, reaper):
        assert wait_until(lambda: queue.client.hget(queue.keys.task(task_id), "status") == "running", timeout_s=30)
        holder = queue.task(task_id).worker
        pool.kill(holder, signal.SIGKILL)
        late_lease = queue.client.hget(queue.keys.task(task_id), "lease")
        # Killed mid-task: still running under the dead worker's lease, nothing recorded yet.
        held = queue.task(task_id)
        assert (held.status, held.attempt, held.worker) == (Status.RUNNING, 1, holder)
        assert queue.client.get(queue.keys.lease(late_lease)) == holder
        assert queue.client.smembers(queue.keys.held(late_lease)) == {task_id}
        assert queue.events() == []
        assert wait_until(queue.drained, timeout_s=60, interval_s=0.02)
        assert pool.join(30)
        returned = reaper.returned

    rescuer = "2" if holder == "1" else "1"
    assert pool.exit_codes() == {holder: -signal.SIGKILL, rescuer: 0}
    assert returned == 1
    events = [(e["id"], e["event"], e["worker"]) for e in queue.events()]
    assert events == [(task_id, "expired", holder), (task_id, "done", rescuer)]
    task = queue.task(task_id)
    assert (task.status, task.worker, task.attempt) == (Status.DONE, rescuer, 2)
    assert task.lease != late_lease

    # The late worker, holding only its stale lease (its fencing token), can neither renew nor record the task.
    assert queue.heartbeat([late_lease], lease_ms=60_000) == [late_lease]
    late = queue.settle(holder, [Settlement(task_id, late_lease, "done", '{"late":true}')], lease_ms=1000)
    assert late.rejected == [task_id]
    after = queue.task(task_id)
    assert (after.status, after.worker, after.result) == (Status.DONE, rescuer, task.result)
    assert [(e["event"], e["worker"]) for e in queue.events()] == [
        ("expired", holder),
        ("done", rescuer),
        ("rejected", holder),
    ]
    result = audit(queue)
    assert result.clean and (result.done, result.completed_twice, result.expired, result.executions) == (1, 0, 1, 2)


# -- 5. the CLI's own chaos run --------------------------------------------------------------


@pytest.mark.slow
def test_cli_chaos_run_exits_0_and_prints_an_audit_with_nothing_lost_or_completed_twice(redis_url, queue, queue_name):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wqsim",
            "run",
            "--chaos",
            "--tasks",
            "300",
            "--workers",
            "3",
            "--seed",
            "7",
            "--redis-url",
            redis_url,
            "--queue",
            queue_name,
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    audit_lines = [line for line in output.splitlines() if "Audit: " in line]
    assert len(audit_lines) == 1, output[-3000:]
    assert re.search(
        r"\bgenerated 300, done \d+, dead \d+, cancelled 0, in flight 0, lost 0, completed twice 0,", audit_lines[0]
    ), audit_lines[0]
    assert "Chaos (seed 7): " in output
    result = audit(queue)  # the CLI's verdict, checked independently
    assert result.clean and (result.generated, result.lost, result.completed_twice) == (300, 0, 0)


# -- 6. the pool's own API while its supervisor replaces workers ----------------------------


@pytest.mark.slow
def test_pool_can_be_inspected_and_stopped_while_its_supervisor_replaces_crashed_workers(redis_url, queue, queue_name):
    """pids(), kill() and stop() must not fail because a dead worker is being replaced.

    Every attempt crashes its worker process (os._exit), so the supervisor is
    constantly closing dead Process objects and forking replacements, while this
    thread calls the pool's public methods, as a chaos killer or Ctrl-C would.
    """
    generate(queue, 300, duration_ms=0, max_attempts=2)
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.02).start()
    config = WorkerConfig(lease_s=0.05, idle_wait_s=0.02)
    pool = WorkerPool(redis_url, queue_name, WORKER_IDS, config, chaos=ChaosConfig(seed=1, crash_p=1.0))
    failures: list[str] = []
    pool.start()
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not queue.drained() and pool.restarts < 150 and not failures:
            try:
                pool.pids()
                for worker_id in WORKER_IDS:  # signal 0: is it there? (as the chaos killer's kill() asks)
                    pool.kill(worker_id, 0)
            except Exception as exc:
                failures.append(f"pids() or kill() after {pool.restarts} replacements: {exc!r}")
        restarts = pool.restarts
    finally:
        shut_down(pool)  # stop() has the same race; shut_down retries it
        reaper.stop()
    assert failures == []
    assert restarts >= 10, "the supervisor hardly replaced anyone: nothing was exercised"


def _exit_at_once() -> None:
    os._exit(0)


def test_a_worker_reaped_when_another_process_started_is_not_signalled():
    """Starting a process reaps every exited child (multiprocessing's cleanup), before the
    supervisor's next round: stop() then sent SIGTERM to a pid no longer ours (ESRCH, in CI)."""
    import multiprocessing as mp

    from wqsim.pool import signal_unless_reaped

    context = mp.get_context("fork")
    gone = context.Process(target=_exit_at_once)
    gone.start()
    os.waitid(os.P_PID, gone.pid, os.WEXITED | os.WNOWAIT)  # it has exited; nothing has reaped it yet
    replacement = context.Process(target=time.sleep, args=(30,))
    replacement.start()  # what the supervisor does next: and starting it reaps `gone`
    with pytest.raises(ProcessLookupError):
        os.kill(gone.pid, 0)  # what stop() did with its pid
    assert signal_unless_reaped(gone, signal.SIGTERM) is False
    assert signal_unless_reaped(replacement, signal.SIGTERM) is True
    replacement.join(10)
    assert replacement.exitcode == -signal.SIGTERM


def test_the_supervisor_sleeps_until_a_worker_exits_rather_than_on_a_timer(redis_url, queue_name, monkeypatch):
    import wqsim.pool

    waits: list[float | None] = []
    real_wait = wqsim.pool.mp_wait
    monkeypatch.setattr(
        wqsim.pool, "mp_wait", lambda objects, timeout=None: (waits.append(timeout), real_wait(objects, timeout))[1]
    )
    config = WorkerConfig(exit_when_drained=False, idle_wait_s=0.5)
    with running(WorkerPool(redis_url, queue_name, ["serving"], config)) as pool:
        assert wait_until(lambda: len(waits) >= 1, 5)
        first_pid = pool.pids()["serving"]
        time.sleep(0.5)  # a polling supervisor would have looked 25 times by now
        assert waits == [None]  # one wait, with no timeout
        pool.kill("serving")  # a crash wakes it, and a serving queue gets a replacement
        assert wait_until(lambda: pool.pids().get("serving") not in (None, first_pid), 5)
        assert pool.restarts == 1
        assert wait_until(lambda: len(waits) >= 2, 5)
        time.sleep(0.2)  # a polling supervisor would have looked 10 times by now
        assert waits == [None, None]  # asleep again, on the replacement's sentinel


def test_workers_that_die_while_the_supervisor_is_busy_replacing_another_are_replaced_too(redis_url, queue_name):
    config = WorkerConfig(exit_when_drained=False, idle_wait_s=0.5)
    ids = ["a", "b", "c", "d"]
    with running(WorkerPool(redis_url, queue_name, ids, config)) as pool:
        assert wait_until(lambda: len(pool.pids()) == 4, 10)
        first = pool.pids()
        for worker_id in ids:  # one after another: some die while a replacement is being forked
            pool.kill(worker_id)
            time.sleep(0.002)
        assert wait_until(lambda: len(pool.pids()) == 4 and not set(pool.pids().values()) & set(first.values()), 10), (
            f"restarts {pool.restarts}, live {pool.pids()}"
        )
        assert pool.restarts == 4


def test_wait_ready_returns_once_every_worker_process_is_connected_and_looking_for_work(redis_url, queue, queue_name):
    """Start, wait_ready, then enqueue: every worker is then waiting for work, none still starting.

    Each worker process signals ready only inside run(), after its clock sync and
    before its first claim, so once wait_ready is True all three are idle on the
    empty, held-open queue: Redis shows them blocked on its wake-up list.
    """
    queue.hold_open("test")
    config = WorkerConfig(exit_when_drained=False, idle_wait_s=0.5)
    with running(WorkerPool(redis_url, queue_name, WORKER_IDS, config)) as pool:
        assert pool.wait_ready(30)
        assert pool.wait_ready(0)  # already counted: no second wait
        assert list(pool.exit_codes().values()) == [None, None, None]
        assert wait_until(lambda: sum(c.get("cmd") == "blpop" for c in queue.client.client_list()) == 3, 10)
        generate(queue, 30, duration_ms=0)
        queue.release_hold("test")
        assert wait_until(queue.drained, 20)
    assert_every_task_done_exactly_once(queue, 30)
