"""Whole runs through faults, from the command line: a Redis restart mid-run, and chaos that replays.

Verdicts come from what the command prints and from Redis state, never from
timings; the one sleep is the outage itself.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers import wait_until

from wqsim import Queue, RedisServer, connect

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

AOF_ARGS = ("--appendonly", "yes", "--appendfsync", "always")


def wqsim_run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "wqsim", "run", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_wqsim_run_rides_out_a_sigkilled_redis_restarted_2_s_later_and_ends_with_a_clean_audit(tmp_path, queue_name):
    server = RedisServer(dir=str(tmp_path), extra_args=AOF_ARGS).start()
    restarted: RedisServer | None = None
    proc = wqsim_run(
        "--tasks", "1000", "--workers", "2", "--lease-s", "5", "--queue", queue_name, "--redis-url", server.url, "-q"
    )
    try:
        q = Queue(connect(server.url), queue_name)
        assert wait_until(lambda: q.counters().get("done", 0) >= 300 or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        server.process.kill()  # type: ignore[union-attr]  # kill -9: only what the AOF holds survives
        server.process.wait()  # type: ignore[union-attr]
        time.sleep(2)  # the outage
        restarted = RedisServer(port=server.port, dir=str(tmp_path), extra_args=AOF_ARGS).start()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()
        if restarted is not None:
            restarted.stop()
    assert proc.returncode == 0, out[-4000:]
    assert "Summary: 1000 done, 0 dead, 0 lost, 0 completed twice" in out
    assert "2/2 workers finished" in out and "All workers finished." in out
    assert "Listener reconnected" in out


def fault_set(url: str, queue: str) -> set[tuple[str, str, str]]:
    """(task id, attempt, faults) of every fault the run injected, from its events stream."""
    return {(e["id"], e["attempt"], e["detail"]) for e in Queue(connect(url), queue).events() if e["event"] == "fault"}


def test_two_chaos_runs_with_one_seed_inject_the_same_faults(redis_url, queue_name):
    args = (
        "--chaos",
        "--seed",
        "3",
        "--tasks",
        "150",
        "--workers",
        "2",
        "--lease-s",
        "1",
        "--queue",
        queue_name,
        "--redis-url",
        redis_url,
        "-q",
    )
    runs = []
    for _ in range(2):
        proc = wqsim_run(*args)
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out[-4000:]
        runs.append((fault_set(redis_url, queue_name), out))
    (first, out1), (second, out2) = runs
    kinds = {kind for _, _, faults in first for kind in faults.split()}
    assert {"crash", "fail", "straggle"} <= kinds, first  # the preset really injected several kinds
    assert first == second, (sorted(first ^ second), out1[-1500:], out2[-1500:])
    Queue(connect(redis_url), queue_name).purge()
