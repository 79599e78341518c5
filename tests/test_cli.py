"""The command line: exit codes, one-line errors, and the seed scenario end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from wqsim.server import free_port


def wqsim(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wqsim", *args], capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--tasks", "many"], "argument --tasks: invalid int value: 'many'"),
        (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["launch"], "invalid choice: 'launch'"),
        (["run", "--workers", "0"], "workers must be an integer >= 1 (got 0)"),
        (["run", "--lease-s", "-1"], "argument --lease-s: lease_s must be a positive, finite number (got -1.0)"),
        (["run", "--max-attempts", "0"], "max_attempts must be an integer >= 1 (got 0)"),
        (["run", "--queue", "bad name"], "queue name must be"),
        (["run", "--fail-p", "2"], "fail_p must be a probability"),
        (["run", "--package-size", "0"], "package_size must be an integer >= 1 (got 0)"),
        (
            ["run", "--lease-s", "1", "--ping-interval-s", "2"],
            "lease_s must be longer than ping_interval_s (got 1.0 <= 2.0)",
        ),
        (["run", "--kind", "launch_missiles"], "unknown task kind 'launch_missiles' (registered: noop, sleep)"),
        (["run", "--graph", "tree"], "argument --graph: invalid choice: 'tree'"),
        (["work", "--workers", "0"], "workers must be an integer >= 1 (got 0)"),
        (["work", "--lease-s", "1", "--ping-interval-s", "3"], "lease_s must be longer than ping_interval_s"),
        (["generate", "--graph", "chain", "--package-size", "3"], "a graph cannot be bundled into work packages"),
        (["generate", "--kind", "nope"], "unknown task kind 'nope'"),
        (["generate", "--graph", "diamond", "--max-attempts", "0"], "max_attempts must be an integer >= 1 (got 0)"),
        (["run", "--graph", "chain", "--package-size", "5"], "a graph cannot be bundled into work packages"),
        (["run", "--arrival-rate", "0"], "argument --arrival-rate: arrival_rate must be a positive, finite number"),
        (["run", "--arrival-rate", "nan"], "arrival_rate must be a positive, finite number (got nan)"),
        (["run", "--arrival-rate", "100", "--graph", "chain"], "arrival_rate cannot be combined with a graph"),
        (["run", "--arrival-rate", "100", "--package-size", "5"], "arrival_rate cannot be combined with package_size"),
    ],
)
def test_bad_arguments_exit_2_with_one_readable_line(args, needle):
    proc = wqsim(*args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("wqsim: error: ")
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["run", "generate", "work", "listen", "reap", "status"])
def test_unreachable_redis_exits_nonzero_with_one_line_naming_the_url(command):
    url = f"redis://127.0.0.1:{free_port()}/0"
    proc = wqsim(command, "--redis-url", url)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1
    assert f"cannot reach Redis at {url} after 5 attempts" in proc.stderr


def test_password_in_an_unreachable_url_is_not_printed():
    proc = wqsim("status", "--redis-url", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert proc.returncode == 3 and "hunter2" not in proc.stderr and ":***@" in proc.stderr


def test_run_prints_the_seed_sequence_and_a_summary(redis_url, queue_name):
    proc = wqsim("run", "--tasks", "30", "--workers", "2", "--redis-url", redis_url, "--queue", queue_name)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr
    order = [
        "Created 30 work items out of 30",
        "picked up task",
        "Received finished message from worker",
        "2/2 workers finished",
        "All workers finished.",
        "Summary: 30 done, 0 dead, 0 lost, 0 completed twice",
    ]
    positions = [log.index(line) for line in order]
    assert positions == sorted(positions)
    assert "tasks/s" in log
    assert {f"Worker {w} finished" for w in ("1", "2")} <= set(line.split(" ", 1)[1] for line in log.splitlines())


def test_run_with_work_packages_completes_every_task(redis_url, queue_name):
    proc = wqsim(
        "run",
        "--tasks",
        "100",
        "--package-size",
        "10",
        "--workers",
        "2",
        "-q",
        "--redis-url",
        redis_url,
        "--queue",
        queue_name,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Bundled them into 10 work packages of up to 10" in proc.stderr
    assert "Summary: 100 done, 0 dead, 0 lost, 0 completed twice, 100 executions" in proc.stderr


@pytest.mark.real_redis
def test_run_with_an_arrival_rate_feeds_tasks_one_by_one_and_ends_clean(redis_url, queue_name):
    args = ["--tasks", "40", "--arrival-rate", "400", "--duration-ms", "1", "--workers", "2", "--seed", "3", "-q"]
    proc = wqsim("run", *args, "--redis-url", redis_url, "--queue", queue_name)
    assert proc.returncode == 0, proc.stderr
    assert "Tasks arrive at 400 per second (Poisson, seed 3)" in proc.stderr
    assert "Summary: 40 done, 0 dead, 0 lost, 0 completed twice, 40 executions" in proc.stderr


def test_run_of_1000_tasks_with_3_workers_ends_all_done_none_lost_none_duplicated(redis_url, queue_name):
    proc = wqsim(
        "run",
        "--tasks",
        "1000",
        "--workers",
        "3",
        "--duration-ms",
        "1",
        "-q",
        "--redis-url",
        redis_url,
        "--queue",
        queue_name,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Summary: 1000 done, 0 dead, 0 lost, 0 completed twice, 1000 executions" in proc.stderr
    assert "picked up" not in proc.stderr  # -q hides per-task lines


@pytest.mark.parametrize(
    "graph, tasks, path", [("diamond", 4, 3), ("chain", 30, 30), ("fanout", 30, 3), ("layered", 30, 6)]
)
def test_run_graph_ends_with_a_clean_audit_and_prints_makespan_against_the_critical_path(
    redis_url, queue_name, graph, tasks, path
):
    proc = wqsim(
        "run",
        "--graph",
        graph,
        "--tasks",
        "30",
        "--workers",
        "2",
        "--duration-ms",
        "5",
        "-q",
        "--redis-url",
        redis_url,
        "--queue",
        queue_name,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"Created a {graph} graph of {tasks} tasks, critical path {path} tasks" in proc.stderr
    assert f"Summary: {tasks} done, 0 dead, 0 lost, 0 completed twice" in proc.stderr
    assert re.search(r"Makespan \d+\.\d+ s; bounds: critical path \d+\.\d+ s \(\d+ tasks\), work/workers", proc.stderr)


def test_run_with_progress_draws_a_bar_fed_by_completion_events(redis_url, queue_name):
    proc = wqsim(
        "run",
        "--tasks",
        "40",
        "--workers",
        "2",
        "--duration-ms",
        "1",
        "--progress",
        "--redis-url",
        redis_url,
        "--queue",
        queue_name,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"queue {queue_name}: 100%" in proc.stderr and "40/40" in proc.stderr
    assert "picked up" not in proc.stderr  # the bar replaces per-task lines


def test_status_and_reap_once_report_on_a_queue(redis_url, queue_name):
    assert (
        wqsim("run", "--tasks", "3", "--workers", "1", "--redis-url", redis_url, "--queue", queue_name).returncode == 0
    )
    status = wqsim("status", "--redis-url", redis_url, "--queue", queue_name)
    assert status.returncode == 0
    assert "ready 0, inflight 0, delayed 0, dead 0" in status.stdout
    assert "done 3" in status.stdout and "lost 0" in status.stdout
    reap = wqsim("reap", "--once", "--redis-url", redis_url, "--queue", queue_name)
    assert reap.returncode == 0 and "Returned 0 task(s), dead-lettered 0" in reap.stderr


def test_status_lists_leases_in_flight_and_dead_letters_with_their_errors(redis_url, queue_name):
    from wqsim import Queue, Settlement, connect, generate

    q = Queue(connect(redis_url), queue_name)
    generate(q, 3, kind="noop", max_attempts=1)
    held = q.claim("w1", lease_ms=60_000, count=2)
    q.settle("w1", [Settlement(held.tasks[0].id, held.lease, "dead", "disk on fire", 1.0, 2.0)], lease_ms=60_000)
    status = wqsim("status", "--redis-url", redis_url, "--queue", queue_name)
    assert status.returncode == 0, status.stderr
    assert "leases in flight (1, soonest deadline first):" in status.stdout
    assert re.search(rf"{re.escape(held.lease)}: 1 task\(s\), deadline in 5\d\.\d s", status.stdout)
    assert f"dead letters (1, newest first):\n    {held.tasks[0].id}: disk on fire" in status.stdout
    assert "in flight 2, lost 0" in status.stdout  # one running, one queued
    q.purge()


@pytest.mark.parametrize("argv", [["run", "--chaos"], ["run", "--chaos", "--lease-s", "2"], ["run", "--hang-p", "0.1"]])
def test_a_chaos_hang_outlasts_the_lease(argv):
    """Every lease, a claim made ahead's included, is an ordinary one kept alive by the heartbeat,
    which stalls with the hang: a hang longer than the lease is always reaped."""
    from wqsim.cli import _run_config, build_parser

    config = _run_config(build_parser().parse_args(argv))
    assert config.chaos.hang_p > 0
    assert config.chaos.hang_s > config.worker.lease_s
