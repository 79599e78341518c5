"""Storage faults are reported, never silent: an evicting Redis is refused, keys that vanish are data loss.

Servers with their own settings (an eviction policy, a small maxmemory, a
restart) are started here; the queue's keys are also deleted by hand, which is
what eviction or a restart without persistence does to them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
from helpers import wait_until

from wqsim import Queue, Reaper, RedisServer, RunConfig, Worker, WorkerConfig, audit, connect, generate, make_tasks, run
from wqsim.queue import Claim, EnqueueRefused
from wqsim.storage import EvictionRisk, check_each_server, check_eviction_policy, eviction_policy


def wqsim(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, "-m", "wqsim", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="module")
def lru_server() -> Iterator[RedisServer]:
    with RedisServer(extra_args=("--maxmemory", "5mb", "--maxmemory-policy", "allkeys-lru")) as server:
        yield server


# -- the eviction policy ------------------------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
@pytest.mark.parametrize(
    "command",
    [
        ["generate", "--tasks", "3"],
        ["work", "--once", "--workers", "1"],
        ["run", "--tasks", "3", "--workers", "1"],
    ],
)
def test_generate_work_and_run_refuse_a_redis_that_may_evict_keys_in_one_line_naming_the_fix(
    lru_server, queue_name, policy, command
):
    connect(lru_server.url).config_set("maxmemory-policy", policy)
    result = wqsim(*command, "--redis-url", lru_server.url, "--queue", queue_name)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and f"maxmemory-policy {policy}" in line
    assert "CONFIG SET maxmemory-policy noeviction" in line and "--allow-eviction" in line
    assert Queue(connect(lru_server.url), queue_name).counters() == {}  # refused before anything was written


@pytest.mark.real_redis
def test_allow_eviction_accepts_the_risk_with_a_warning(lru_server, queue_name, captured_logger):
    client = connect(lru_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    logger, handler = captured_logger
    assert check_eviction_policy(client, "Redis", allow_eviction=True, logger=logger) == "allkeys-lru"
    assert "may evict wqsim's keys" in handler.messages[0]
    result = wqsim("generate", "--tasks", "3", "--allow-eviction", "--redis-url", lru_server.url, "--queue", queue_name)
    assert result.returncode == 0, result.stderr
    Queue(client, queue_name).purge()


@pytest.mark.real_redis
def test_the_shards_of_a_queue_on_one_server_are_checked_and_warned_of_once_per_server(
    lru_server, redis_url, captured_logger
):
    connect(lru_server.url).config_set("maxmemory-policy", "allkeys-lru")
    logger, handler = captured_logger
    shards = [connect(lru_server.url) for _ in range(3)] + [connect(redis_url)]  # two servers
    check_each_server(shards, "Redis", allow_eviction=True, logger=logger)
    assert len(handler.messages) == 1 and "may evict wqsim's keys" in handler.messages[0]
    with pytest.raises(EvictionRisk):
        check_each_server(shards, "Redis", logger=logger)


@pytest.mark.real_redis
def test_wqsim_run_refuses_an_evicting_redis_unless_its_config_allows_it(lru_server):
    connect(lru_server.url).config_set("maxmemory-policy", "allkeys-lfu")
    with pytest.raises(EvictionRisk, match="maxmemory-policy allkeys-lfu"):
        run(RunConfig(tasks=1, workers=1), url=lru_server.url)


@pytest.mark.real_redis
def test_the_policy_is_read_from_info_when_config_is_denied(lru_server):
    admin = connect(lru_server.url)
    admin.config_set("maxmemory-policy", "allkeys-lru")
    admin.acl_setuser(
        "no-config", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-config"]
    )
    limited = connect(f"redis://no-config:pw@127.0.0.1:{lru_server.port}/0")
    with pytest.raises(redis.exceptions.NoPermissionError):
        limited.config_get("maxmemory-policy")
    assert eviction_policy(limited) == "allkeys-lru"
    admin.acl_deluser("no-config")


def test_a_server_that_answers_neither_config_nor_info_is_accepted_with_a_warning(fake_client, captured_logger):
    logger, handler = captured_logger
    assert check_eviction_policy(fake_client, "fakeredis", logger=logger) is None
    assert "Cannot read maxmemory-policy of fakeredis" in handler.messages[0]


# -- never existed, or vanished? ------------------------------------------------------------


@pytest.mark.real_redis
def test_after_an_empty_restart_the_expected_count_makes_every_task_lost(tmp_path, queue_name):
    with RedisServer() as server:
        q = Queue(connect(server.url), queue_name)
        generate(q, 20)
        port = server.port
    with RedisServer(port=port) as restarted:  # no persistence: it comes back empty
        q = Queue(connect(restarted.url), queue_name)
        a = audit(q, expected=20)
        assert (a.generated, a.lost, a.counters_lost, a.clean) == (20, 20, True, False)
        assert "counters were lost" in a.summary()
        unknown = audit(q)  # without the producer's count nothing says the queue ever existed
        assert (unknown.generated, unknown.lost, unknown.clean) == (0, 0, False)
        status = wqsim("status", "--redis-url", restarted.url, "--queue", queue_name, "--expected", "20")
        assert status.returncode == 1 and "20 task(s) of queue" in status.stderr
        assert wqsim("status", "--redis-url", restarted.url, "--queue", queue_name).returncode == 0


def test_a_stats_hash_lost_beside_its_ledger_is_reported_without_an_expected_count(make_queue):
    q = make_queue()
    generate(q, 5)
    q.client.delete(q.keys.stats, q.keys.ready)
    assert q.claim("w", lease_ms=1000).state == "lost"
    a = audit(q)
    assert (a.generated, a.counters_lost, a.clean) == (5, True, False)
    assert a.lost == 5 and set(a.lost_ids) == {"1", "2", "3", "4", "5"}  # queued, but in no ready list


def test_a_recreated_stats_hash_is_never_drained_and_the_worker_stops_saying_so(
    make_queue, client, queue_name, captured_logger
):
    q = make_queue()
    generate(q, 5, duration_ms=0)
    q.client.delete(q.keys.stats)  # as an eviction would; the claims' counters recreate it
    logger, handler = captured_logger
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05), logger=logger)
    stats = worker.run()  # returns: it does not wait for a drain that can never be reported
    assert stats.queue_vanished and stats.done == 5
    lines = [m for m in handler.messages if "vanished" in m]
    assert len(lines) == 1 and "its stats hash was recreated after Redis lost it" in lines[0]
    assert not q.drained() and not q.claim("w2", lease_ms=1000).drained
    generate(q, 1)  # a later enqueue does not paper over the loss
    assert not q.counters().get("created") and audit(q).counters_lost


def test_a_worker_whose_queue_vanishes_logs_it_once_and_stops(make_queue, client, queue_name, captured_logger):
    q = make_queue()
    logger, handler = captured_logger
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, exit_when_drained=False), logger=logger)
    result = []
    thread = threading.Thread(target=lambda: result.append(worker.run()), daemon=True)
    thread.start()
    generate(q, 3, duration_ms=0)
    assert wait_until(lambda: q.counters().get("done") == 3, 10)
    q.purge()  # every key gone, as after a restart without persistence
    thread.join(10)
    assert not thread.is_alive() and result[0].queue_vanished
    lines = [m for m in handler.messages if "vanished" in m]
    assert lines == [
        f"Worker w1: queue {queue_name!r} vanished from Redis (its stats hash is gone): "
        "at least 3 task(s) lost; stopping"
    ]


def test_a_worker_on_a_queue_not_created_yet_waits_for_a_producer(make_queue, make_worker):
    q = make_queue()
    assert q.claim("w", lease_ms=1000).state == "missing"
    worker = make_worker()
    assert not worker._queue_vanished(Claim(state="missing"))  # never seen: not created yet, not lost
    generate(q, 2, duration_ms=0)
    assert worker.run().done == 2 and not worker.stats.queue_vanished


def test_a_worker_that_finds_task_hashes_but_no_stats_hash_reports_the_queue_lost_rather_than_waiting(
    make_queue, client, queue_name, captured_logger
):
    q = make_queue()
    generate(q, 5, duration_ms=0)
    for key in client.scan_iter(match=q.keys.pattern):  # all but the task hashes gone before any worker came
        if not key.startswith(q.keys.task("")):
            client.delete(key)
    logger, handler = captured_logger
    worker = Worker(client, queue_name, "w1", WorkerConfig(idle_wait_s=0.05, exit_when_drained=True), logger=logger)
    stats = worker.run()  # returns: before the fix it waited for a producer forever
    assert stats.queue_vanished and stats.done == 0
    assert [m for m in handler.messages if "vanished" in m] == [
        f"Worker w1: queue {queue_name!r} vanished from Redis (its stats hash is gone): "
        "task(s) lost, how many is unknown; stopping"
    ]


def test_a_worker_waiting_for_a_queue_looks_for_its_task_hashes_a_step_at_a_time_and_stops_after_a_pass(
    make_queue, make_worker
):
    q = make_queue()
    worker = make_worker()
    for _ in range(50):  # a small keyspace: one pass of SCAN steps, then no more looking
        assert not worker._queue_vanished(Claim(state="missing"))
    assert worker._orphan_scan is None
    generate(q, 2, duration_ms=0)  # a producer creates the queue: stats hash and tasks in one script
    assert worker.run().done == 2 and not worker.stats.queue_vanished


def test_unfinished_tasks_in_no_structure_are_reported_stranded(make_queue, make_worker, captured_logger):
    q = make_queue()
    generate(q, 3, duration_ms=0)
    q.client.delete(q.keys.ready)  # as if the ready list were evicted
    assert q.claim("w", lease_ms=1000).state == "stranded"
    worker = make_worker()
    worker.log = captured_logger[0]
    assert worker.run().queue_vanished
    assert any("3 task(s) lost" in m and "in no list" in m for m in captured_logger[1].messages)


# -- memory ------------------------------------------------------------------------------


@pytest.mark.real_redis
def test_an_enqueue_refused_for_memory_says_in_one_line_that_none_was_written(queue_name):
    with RedisServer(extra_args=("--maxmemory", "3mb", "--maxmemory-policy", "noeviction")) as server:
        q = Queue(connect(server.url), queue_name)
        with pytest.raises(EnqueueRefused) as refused:
            for _ in range(50):
                generate(q, 2000, kind="noop")
        assert "out of memory" in str(refused.value) and "none was written" in str(refused.value)
        before = q.counters()["total"]
        with pytest.raises(EnqueueRefused):  # several chunks in one transaction: all or nothing too
            generate(q, 12_000, kind="noop")
        assert q.counters()["total"] == before == int(q.client.hget(q.keys.ledger, "enqueued"))
        assert q.client.llen(q.keys.ready) == before
        result = wqsim("generate", "--tasks", "100", "--kind", "noop", "--redis-url", server.url, "--queue", queue_name)
        line = result.stderr.strip()
        assert result.returncode == 1 and "\n" not in line and "Redis refused to enqueue 100 task(s)" in line
        assert "none was written" in line


@pytest.mark.real_redis
@pytest.mark.slow
def test_under_allkeys_lru_evictions_are_reported_and_work_once_does_not_exit_0(lru_server, queue_name):
    client = connect(lru_server.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    q = Queue(client, queue_name)
    for start in range(0, 60_000, 5_000):  # ids of our own: the id counter may be evicted too
        q.enqueue(make_tasks([str(i) for i in range(start, start + 5_000)], kind="noop"))
    assert int(client.info("stats")["evicted_keys"]) > 0
    reaper = Reaper(Queue(client, queue_name), interval_s=0.2).start()  # returns claims whose lease key was evicted
    try:
        result = wqsim(
            "work",
            "--once",
            "--allow-eviction",
            "--mode",
            "thread",
            "--workers",
            "1",
            "--batch-size",
            "100",
            "--lease-s",
            "1",
            "-q",
            "--redis-url",
            lru_server.url,
            "--queue",
            queue_name,
            timeout=180,
        )
    finally:
        reaper.stop()
    assert result.returncode == 1, result.stderr[-2000:]
    assert "lost" in result.stderr.splitlines()[-1]
    a = audit(q, expected=60_000)
    assert not a.clean and (a.lost > 0 or a.counters_lost), a.summary()
    status = wqsim("status", "--redis-url", lru_server.url, "--queue", queue_name, "--expected", "60000")
    assert status.returncode == 1
    q.purge()


@pytest.mark.real_redis
def test_wqsim_work_exits_1_once_its_queue_vanishes_and_no_worker_process_is_replaced(redis_url, queue_name):
    q = Queue(connect(redis_url), queue_name)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wqsim", "work", "--workers", "1", "--redis-url", redis_url, "--queue", queue_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        generate(q, 3, duration_ms=0)
        assert wait_until(lambda: q.counters().get("done") == 3, 30)
        q.purge()  # every key gone, as after a restart without persistence
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr[-2000:]
    assert stderr.count("vanished from Redis (its stats hash is gone)") == 1
    assert "replacement" not in stderr and "stopped: its queue vanished" not in stderr
