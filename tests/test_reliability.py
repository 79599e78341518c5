"""Leases, the reaper, failure injection and the audit, in one process (threads)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest
from helpers import done_count, wait_until

from wqsim import (
    ChaosConfig,
    HandlerRegistry,
    Queue,
    Reaper,
    Settlement,
    Status,
    Worker,
    WorkerConfig,
    audit,
    generate,
)
from wqsim.chaos import draw


def test_chaos_draws_depend_only_on_seed_task_and_attempt():
    chaos = ChaosConfig(seed=5, fail_p=0.5, hang_p=0.5, crash_p=0.5, straggler_p=0.5)
    first = [draw(chaos, str(i), 1) for i in range(50)]
    assert first == [draw(chaos, str(i), 1) for i in range(50)]
    assert first != [
        draw(ChaosConfig(seed=6, fail_p=0.5, hang_p=0.5, crash_p=0.5, straggler_p=0.5), str(i), 1) for i in range(50)
    ]
    assert 10 < sum(f.fail for f in first) < 40


def test_no_faults_are_drawn_when_chaos_is_off():
    assert not draw(ChaosConfig(), "1", 1).crash


def test_hung_worker_loses_its_lease_and_its_late_result_is_rejected(client, queue_name):
    """The seed's race: a task must not become both finished (late) and returned."""
    q = Queue(client, queue_name)
    handlers = HandlerRegistry()
    hung_in_task, rescued = threading.Event(), threading.Event()

    @handlers.register("hang_once")
    def hang_once(task):
        if task.attempt == 1:
            hung_in_task.set()
            assert rescued.wait(10), "the rescuer never finished"  # hung past its 0.1 s lease, until then
        return {"attempt": task.attempt}

    generate(q, 1, kind="hang_once", max_attempts=3)
    cfg = WorkerConfig(lease_s=0.1, idle_wait_s=0.02)
    reaper = Reaper(Queue(client, queue_name), interval_s=0.02).start()
    # A hung process sends no heartbeats either: model it with pings off.
    hung = Worker(client, queue_name, "hung", replace(cfg, heartbeat=False), registry=handlers)
    hung_thread = threading.Thread(target=hung.run)
    hung_thread.start()
    try:
        assert hung_in_task.wait(5), "the hung worker never claimed the task"
        rescuer = Worker(client, queue_name, "rescuer", cfg, registry=handlers)
        rescuer.run()  # waits out the lease, is handed the reaped task, and finishes it
    finally:
        rescued.set()  # only now does the hung worker come back with its late result
        hung_thread.join(5)
        reaper.stop()
    assert not hung_thread.is_alive()
    task = q.task("1")
    assert (task.status, task.worker, task.result, done_count(q, "1")) == (Status.DONE, "rescuer", {"attempt": 2}, 1)
    assert hung.stats.rejected == 1
    events = [(e["event"], e["worker"]) for e in q.events()]
    assert events == [("expired", "hung"), ("done", "rescuer"), ("rejected", "hung")]
    assert audit(q).clean
    q.purge()


def test_heartbeats_keep_a_long_task_alive_past_its_lease(client, queue_name):
    q = Queue(client, queue_name)
    generate(q, 1, duration_ms=2000, max_attempts=1)  # pinged ten times a lease: a busy machine may delay a few
    reaper = Reaper(Queue(client, queue_name), interval_s=0.02).start()
    worker = Worker(client, queue_name, "w1", WorkerConfig(lease_s=0.8, ping_interval_s=0.08, idle_wait_s=0.02))
    worker.run()
    reaper.stop()
    task, stats = q.task("1"), worker.stats
    # Should the host stall this process for a whole lease, the lease rightly expires: say so.
    stalled = f"longest time between renewals {stats.longest_renewal_gap_s:.3f} s"
    assert (task.status, task.attempt, done_count(q, "1")) == (Status.DONE, 1, 1), stalled  # 2.5 leases, never reaped
    assert stats.leases_lost == 0 and q.counters().get("expired", 0) == 0, stalled
    assert stats.heartbeats >= 2 and 0 < stats.longest_renewal_gap_s < 0.8


def test_without_heartbeats_the_same_task_is_reaped_and_its_result_rejected(client, queue_name):
    q = Queue(client, queue_name)
    generate(q, 1, duration_ms=600, max_attempts=1)
    reaper = Reaper(Queue(client, queue_name), interval_s=0.02).start()
    worker = Worker(client, queue_name, "w1", WorkerConfig(lease_s=0.2, heartbeat=False, idle_wait_s=0.02))
    worker.run()
    reaper.stop()
    assert q.task("1").status == Status.DEAD and "no attempts left" in q.task("1").error
    assert worker.stats.rejected == 1


def test_a_worker_that_finds_its_lease_lost_stops_the_package_and_records_nothing(client, queue_name):
    q = Queue(client, queue_name)
    generate(q, 5, duration_ms=100, package_size=5)
    worker = Worker(client, queue_name, "w1", WorkerConfig(lease_s=5, ping_interval_s=0.05, idle_wait_s=0.02))
    thread = threading.Thread(target=worker.run)
    thread.start()
    assert wait_until(lambda: q.client.exists(q.keys.lease("w1#1@1")), 5, interval_s=0.005)
    q.client.delete(q.keys.lease("w1#1@1"))  # Redis "expires" the package's lease mid-task
    worker.stop()  # claim nothing after this package
    thread.join(5)
    assert worker.stats.leases_lost == 1
    assert worker.stats.performed < 5  # it stopped working on the package at the next ping
    assert q.counters().get("done", 0) == 0  # and recorded none of its results
    assert q.reap(now=time.time() + 60).returned == 5
    assert q.client.lrange(q.keys.ready, 0, -1) == ["pkg:1"]
    assert audit(q).lost == 0


def test_thread_mode_chaos_run_ends_with_a_clean_audit(client, queue_name):
    q = Queue(client, queue_name)
    generate(q, 200, duration_ms=1, max_attempts=10)
    chaos = ChaosConfig(seed=3, fail_p=0.1, crash_p=0.05, straggler_p=0.05, hang_p=0.02, hang_s=0.2)
    cfg = WorkerConfig(lease_s=0.1, idle_wait_s=0.02, backoff_s=0.005)
    reaper = Reaper(Queue(client, queue_name), interval_s=0.02).start()
    workers = [Worker(client, queue_name, f"w{i}", cfg, chaos=chaos) for i in range(3)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reaper.stop()
    result = audit(q)
    assert result.clean and result.done == 200
    assert result.executions > 200  # faults really happened and were retried
    assert sum(w.stats.abandoned for w in workers) > 0
    q.purge()


def test_audit_detects_a_lost_task(make_queue):
    q = make_queue()
    generate(q, 3)
    q.client.lrem(q.keys.ready, 1, "2")  # the task hash says queued, but nothing will ever claim it
    result = audit(q)
    assert (result.lost, result.lost_ids, result.clean) == (1, ("2",), False)


def test_audit_detects_a_task_completed_twice(make_queue, make_worker):
    q = make_queue()
    generate(q, 2, duration_ms=0)
    make_worker().run()
    q.client.xadd(q.keys.events, {"event": "done", "id": "1", "worker": "w9", "at": "0"})  # a second record
    result = audit(q)
    assert (result.completed_twice, result.twice_ids, result.clean) == (1, ("1",), False)


def test_audit_counts_executions_beyond_completions(make_queue):
    q = make_queue()
    generate(q, 1)
    q.claim("w1", lease_ms=20)
    time.sleep(0.06)  # Redis expires the lease key: the behaviour under test, not a synchronisation
    q.reap(now=time.time() + 60)
    claim = q.claim("w2", lease_ms=5000)
    q.settle("w2", [Settlement("1", claim.lease, "done", "null")], lease_ms=1000)
    result = audit(q)
    assert (result.executions, result.completions, result.duplicate_executions, result.expired) == (2, 1, 1, 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_embedded_redis_server_dies_with_a_killed_parent():
    code = (
        "import wqsim, sys; wqsim.connect(); print(wqsim.embedded_server().process.pid, flush=True); sys.stdin.read()"
    )
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    child_pid = int(parent.stdout.readline())
    os.kill(child_pid, 0)  # the embedded server is running
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline:
        if not _running(child_pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the embedded redis-server outlived its killed parent")


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie awaiting its (re-)parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
