"""Inputs: every numeric flag refuses what makes no sense in one line, and generate streams
huge counts with flat memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from wqsim import Queue, connect, generate
from wqsim.cli import build_parser
from wqsim.generator import GENERATE_CHUNK

# (command, flag) for every numeric option; each rejects negative, NaN and infinite values.
NUMERIC_FLAGS = [
    ("run", "--tasks"),
    ("run", "--arrival-rate"),
    ("run", "--workers"),
    ("run", "--duration-ms"),
    ("run", "--batch-size"),
    ("run", "--package-size"),
    ("run", "--ping-interval-s"),
    ("run", "--lease-s"),
    ("run", "--max-attempts"),
    ("run", "--timeout-s"),
    ("run", "--task-timeout-s"),
    ("run", "--fail-p"),
    ("run", "--hang-p"),
    ("run", "--crash-p"),
    ("run", "--straggler-p"),
    ("run", "--shards"),
    ("generate", "--tasks"),
    ("generate", "--shards"),
    ("generate", "--duration-ms"),
    ("generate", "--package-size"),
    ("generate", "--max-attempts"),
    ("generate", "--task-timeout-s"),
    ("work", "--workers"),
    ("work", "--shards"),
    ("work", "--batch-size"),
    ("work", "--lease-s"),
    ("work", "--ping-interval-s"),
    ("work", "--task-timeout-s"),
    ("listen", "--workers"),
    ("listen", "--timeout-s"),
    ("listen", "--every-s"),
    ("listen", "--shards"),
    ("reap", "--interval-s"),
    ("reap", "--shards"),
    ("status", "--expected"),
    ("status", "--shards"),
    ("acl", "--shards"),
    *(
        (command, flag)
        for command in ("run", "generate")
        for flag in ("--keep-done", "--keep-done-s", "--events-maxlen")
    ),
]
# wqsim sim takes the options of wqsim run, and --cores.
NUMERIC_FLAGS += [("sim", flag) for command, flag in list(NUMERIC_FLAGS) if command == "run"] + [("sim", "--cores")]


def wqsim(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    return subprocess.run([sys.executable, "-m", "wqsim", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(("command", "flag"), NUMERIC_FLAGS)
@pytest.mark.parametrize("value", ["-1", "nan", "inf", "-inf"])
def test_every_numeric_flag_rejects_negative_nan_and_infinite_values(command, flag, value, capsys):
    from wqsim.cli import main

    assert main([command, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"wqsim: error: argument {flag}: ")
    assert "Traceback" not in err


def test_the_list_of_numeric_flags_covers_every_numeric_option_of_the_parser():
    parser = build_parser()
    found = set()
    for command, sub in parser._subparsers._group_actions[0].choices.items():  # type: ignore[union-attr]
        for action in sub._actions:
            if action.type is not None and action.option_strings and action.dest != "seed":
                found.add((command, action.option_strings[-1]))
    assert found == set(NUMERIC_FLAGS)


def test_generate_rejects_a_negative_nan_or_infinite_duration_as_a_process_would_see_it():
    for value in ("-1", "nan", "inf"):
        proc = wqsim("generate", "--duration-ms", value, "--redis-url", "redis://127.0.0.1:1/0")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == (
            f"wqsim: error: argument --duration-ms: duration_ms must be a finite number >= 0 (got {float(value)!r})\n"
        )


def test_a_zero_duration_and_other_sensible_values_are_accepted():
    args = build_parser().parse_args(["generate", "--duration-ms", "0", "--tasks", "5", "--task-timeout-s", "0.5"])
    assert (args.duration_ms, args.tasks, args.task_timeout_s) == (0.0, 5, 0.5)
    assert build_parser().parse_args(["run", "--fail-p", "0", "--crash-p", "1"]).crash_p == 1.0


def test_the_generate_function_refuses_a_bad_duration_too(make_queue):
    with pytest.raises(ValueError, match=r"duration_ms must be a finite number >= 0 \(got nan\)"):
        generate(make_queue(), 3, duration_ms=float("nan"))


def test_generate_streams_in_chunks_each_of_them_whole(real_client, queue_name):
    q = Queue(real_client, queue_name)
    ids = generate(q, 25, kind="noop", chunk=10, package_size=4)  # chunks of 8: no package spans two
    assert ids == [str(i) for i in range(1, 26)] and len(ids) == 25
    assert q.counters()["total"] == 25
    assert real_client.llen(q.keys.ready) == 7  # 6 packages of 4 and one of 1


def test_generate_says_how_many_tasks_it_wrote_when_it_fails_part_way(real_client, queue_name):
    q = Queue(real_client, queue_name)
    real_client.hset(q.keys.task("15"), "kind", "noop")  # a clash in the second chunk
    from wqsim.generator import PartialEnqueue

    with pytest.raises(PartialEnqueue, match=r"after 10 of 30 tasks were written .*DuplicateTask") as info:
        generate(q, 30, kind="noop", chunk=10)
    assert info.value.written == 10 and q.counters()["total"] == 10


def test_generating_tasks_takes_flat_memory_not_memory_per_task(redis_url, queue_name):
    """Generating 200,000 no-op tasks (eight chunks) raises a process's peak RSS by far less than
    building them would take (about 1 KB per task as Task objects and their encoded arguments,
    200 MB here): memory is per chunk, not per task. benchmarks/generate_memory.py measures
    10,000,000; the README's figure comes from there."""
    count = 200_000
    assert count >= 8 * GENERATE_CHUNK  # enough chunks that memory per task would show
    script = textwrap.dedent(f"""
        from wqsim import Queue, connect, generate
        # VmHWM, not ru_maxrss: Linux carries a parent's peak into its children
        def peak_kb():
            return int(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')))
        q = Queue(connect({redis_url!r}), {queue_name!r})
        before = peak_kb()
        generate(q, {count}, kind="noop")
        print(before, peak_kb())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    before_kb, peak_kb = (int(n) for n in proc.stdout.split()[-2:])
    grown_mb = (peak_kb - before_kb) / 1024
    print(f"peak RSS generating {count:,} tasks: {peak_kb / 1024:.0f} MB, {grown_mb:.0f} MB above the start")
    assert grown_mb < 50  # under 256 bytes a task, against about 1 KB a task to build them all
    assert peak_kb / 1024 < 200
    client = connect(redis_url)
    assert Queue(client, queue_name).counters()["total"] == count
    client.close()
