"""Stopping and supervision: SIGTERM at any moment, a killed parent, the embedded server's directory.

Every command that runs until stopped records SIGTERM instead of raising it
(wqsim.stopping); these tests send it at random moments of a real ``wqsim
work`` and check the exit code, the time it took and, from Redis, that nothing
was lost. Randomness comes from a seeded RNG, so a failure can be replayed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import wait_until

from wqsim import Queue, Reaper, Status, audit, connect, generate
from wqsim.stopping import StopRequest

BIN = Path(sys.executable).parent


def catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def children_of(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.add(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def start_work(redis_url: str, queue: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "wqsim"), "work", "--queue", queue, *args],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


# -- the stop request itself ---------------------------------------------------------------


def test_a_stop_request_is_raised_by_sigterm_without_an_exception_in_the_main_thread():
    with StopRequest() as stop:
        assert not stop.wait(0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5)  # woken through the pipe; no KeyboardInterrupt anywhere
        assert stop.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back as it was


def test_a_stop_request_set_from_another_thread_wakes_its_waiter():
    import threading

    with StopRequest() as stop:
        threading.Timer(0.01, stop.set).start()
        assert stop.wait(5) and stop.reason == "request"


# -- SIGTERM at random moments -----------------------------------------------------------------

TASK_S = 0.3
TASKS = 300  # never run out: the 30 trials finish a few tasks each (at most six in hand at once)
PHASES = ("start-up", "idle", "mid-task", "mid-batch")


@pytest.mark.real_redis
@pytest.mark.slow
def test_sigterm_at_30_random_moments_always_stops_wqsim_work_with_exit_0_in_time_and_loses_nothing(
    redis_url, queue_name
):
    rng = random.Random(12)
    queue = Queue(connect(redis_url), queue_name)
    idle_queue = Queue(connect(redis_url), queue_name + "-idle")
    generate(queue, TASKS, duration_ms=TASK_S * 1000)
    outcomes = []
    for trial in range(30):
        phase = PHASES[trial % len(PHASES)]
        batch = "3" if phase == "mid-batch" else rng.choice(["1", "2"])
        target = idle_queue if phase == "idle" else queue
        proc = start_work(redis_url, target.name, "--workers", "2", "--batch-size", batch, "-q")
        try:
            assert wait_until(lambda proc=proc: catches_sigterm(proc.pid) or proc.poll() is not None, 20)
            if phase == "start-up":
                time.sleep(rng.uniform(0, 0.15))  # while it connects and forks its workers
            elif phase == "idle":
                assert wait_until(lambda proc=proc: len(children_of(proc.pid)) == 2, 20)
                time.sleep(rng.uniform(0.05, 1.2))  # somewhere in an idle worker's blocking wait
            else:
                running_now = lambda: Status.RUNNING in queue.statuses().values()  # noqa: E731
                assert wait_until(running_now, 20)
                time.sleep(rng.uniform(0, TASK_S))
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
            took_s = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        outcomes.append((trial, phase, proc.returncode, round(took_s, 2)))
        assert proc.returncode == 0, f"trial {trial} ({phase}): exit {proc.returncode}\n{out[-3000:]}"
        assert "did not stop" not in out
        assert took_s < TASK_S + 2, f"trial {trial} ({phase}) took {took_s:.2f} s:\n{out[-3000:]}"
        result = audit(queue)
        assert (result.lost, result.completed_twice, result.running) == (0, 0, 0), result.summary()
    print("\n(trial, phase, exit code, seconds to exit):", outcomes)
    # What the stopped workers did not finish is still there, and other workers finish it
    # (six of them: the leftovers are some 70 s of sleeping tasks).
    proc = start_work(redis_url, queue_name, "--workers", "6", "--once", "-q")
    assert proc.wait(120) == 0
    result = audit(queue)
    assert result.clean and result.done == TASKS and result.executions == TASKS, result.summary()
    queue.purge()
    idle_queue.purge()


# -- a killed parent --------------------------------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.slow
def test_a_sigkilled_wqsim_work_takes_its_worker_processes_with_it_and_the_reaper_returns_their_tasks(
    redis_url, queue_name
):
    lease_s = 1.0
    queue = Queue(connect(redis_url), queue_name)
    generate(queue, 6, duration_ms=3000)
    proc = start_work(redis_url, queue_name, "--workers", "2", "--lease-s", str(lease_s))
    try:
        assert wait_until(lambda: list(queue.statuses().values()).count(Status.RUNNING) == 2, 20)
        workers = children_of(proc.pid)
        assert len(workers) >= 2  # the two workers (and the embedded janitor, if any: none with REDIS_URL)
        proc.kill()
        proc.wait()
        killed_at = time.monotonic()
        assert wait_until(lambda: not any(alive(pid) for pid in workers), lease_s + 1)
        assert time.monotonic() - killed_at < lease_s + 1
    finally:
        if proc.poll() is None:
            proc.kill()
    # Their leases run out (nobody renews them), the reaper returns the tasks, another pool finishes them.
    reaper = Reaper(Queue(connect(redis_url), queue_name), interval_s=0.1).start()
    try:
        assert wait_until(lambda: reaper.returned >= 2, lease_s + 5)
    finally:
        reaper.stop()
    rescuer = start_work(redis_url, queue_name, "--workers", "2", "--once", "-q")
    assert rescuer.wait(60) == 0
    result = audit(queue)
    assert result.clean and result.done == 6 and result.completed_twice == 0, result.summary()
    queue.purge()


@pytest.mark.real_redis
def test_a_sigkilled_parent_leaves_no_embedded_redis_directory_behind(tmp_path):
    code = "import wqsim, time; wqsim.resolve_url(); print(wqsim.embedded_server().dir, flush=True); time.sleep(60)"
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        directory = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
        assert directory.name.startswith("wqsim-redis-") and directory.is_dir()
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: not directory.exists(), 15), f"{directory} was left behind"


# -- one line for a bad queue name ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "generate", "work", "listen", "reap", "status"])
def test_every_command_rejects_a_bad_queue_name_with_one_line_and_exit_2(command):
    proc = subprocess.run(
        [sys.executable, "-m", "wqsim", command, "--queue", "bad queue name"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "REDIS_URL"},
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("wqsim: error: queue name must be")
    assert "Traceback" not in proc.stderr + proc.stdout
