"""The README, tested: its Python runs, its commands are exercised, its shown output is what the code prints.

Conventions for README.md (the tests below enforce them):

- **Python blocks** (```python) run as scripts, each test in a fresh interpreter against a
  redis-server of its own (REDIS_URL points at it, so ``wqsim.connect()`` uses it). The blocks of
  one section (the nearest heading above) share a namespace, in README order: the test of a
  block runs the section's earlier blocks first, in the same script. So a section's first block
  must be self-contained (imports, a connection, the handlers of every kind it enqueues).
- **Shown output of Python**: a comment ``# -> text``, at the end of a line or on a line of its
  own, is one line of what the block prints on stdout, in order. Stdout must be exactly those
  lines: a block that prints shows what it prints.
- **Shown output of commands**: a ```console block is ``$ command`` lines, each followed by its
  output. An untagged (or ```text) block is output too, and must be marked by an HTML comment
  on the line before it: ``<!-- output: COMMAND -->`` (run COMMAND and compare),
  ``<!-- output (numbers masked): COMMAND -->`` (COMMAND is a smaller run than the one shown:
  every number is masked), or ``<!-- not run: reason -->``. wqsim prints results on stdout and
  logs on stderr; output is compared with stdout when the command writes there, else stderr.
- **Comparison** is line by line after masking what legitimately varies, on both sides: clock
  times, 127.0.0.1 ports, pids, every decimal number (durations, ratios) and the number before
  ``tasks/s``. In a shown line, ``...`` matches any text; a line that is only ``...`` matches any
  number of lines. Counts, ids and words are compared as shown.
- **Commands**: every command in a ```sh/```bash/```shell block, every ``$`` line of a ```console
  block, and every inline code span that starts with a command (``wqsim``, ``make``, ``docker
  compose``, ``python -m`` ...) is listed in WHERE_EXERCISED, with the test (or ``.ci/run``) that
  runs it; a new README command fails ``test_every_readme_command_is_exercised`` until it is.
- Markers are rare; a ``not run`` marker must give its reason.

``wqsim ...`` commands run as ``python -m wqsim ...`` from this checkout. A ``wqsim run`` without
``--workers`` gets ``--workers 1`` on a machine whose default pool (cores - 1) is not 1 worker:
the README's samples are of a 2-core machine.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from wqsim import Queue, RedisServer, audit, connect, default_workers

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TIMEOUT_S = 60

pytestmark = pytest.mark.real_redis


# -- reading the README -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # of the opening fence, 1-based
    section: str
    text: str
    marker: str  # the <!-- ... --> comment on the line before the fence, or ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}:L{self.line}"


def read_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    section, fence, body, start, marker = "top", None, [], 0, ""
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if fence is None:
            if line.startswith("```"):
                fence, body, start = line[3:].strip(), [], number
                before = lines[number - 2].strip() if number >= 2 else ""
                found = re.fullmatch(r"<!--\s*(.*?)\s*-->", before)
                marker = found.group(1) if found else ""
            elif line.startswith("#"):
                section = line.lstrip("#").strip()
        elif line.startswith("```"):
            blocks.append(Block(fence, start, section, "\n".join(body), marker))
            fence = None
        else:
            body.append(line)
    assert fence is None, f"README.md: the block opened at line {start} is never closed"
    return blocks


BLOCKS = read_blocks(README.read_text())
PYTHON = [b for b in BLOCKS if b.lang == "python" and not b.marker.startswith("not run")]
OUTPUTS = [b for b in BLOCKS if b.lang in ("", "text")]
CONSOLES = [b for b in BLOCKS if b.lang == "console"]
SHELLS = {"sh", "bash", "shell"}


# -- comparing output ---------------------------------------------------------------------------

MASKS = [
    (re.compile(r"\b\d\d:\d\d:\d\d\.\d{3}\b"), "HH:MM:SS.mmm"),  # clock times
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\bpid \d+"), "pid PID"),
    (re.compile(r"\d+\.\d+"), "D.D"),  # durations and ratios
    (re.compile(r"[\d,]+ tasks/s"), "N tasks/s"),
]


def mask(line: str, numbers: bool = False) -> str:
    for pattern, replacement in MASKS:
        line = pattern.sub(replacement, line)
    return re.sub(r"\d+", "N", line) if numbers else line


def assert_output_matches(shown: list[str], printed: list[str], numbers: bool = False) -> None:
    """``shown`` (README) against ``printed`` (the program), masked; ``...`` is a wildcard."""
    patterns = [
        None if s.strip() == "..." else re.compile(".*".join(map(re.escape, mask(s, numbers).split("..."))))
        for s in shown
    ]
    actual = [mask(p, numbers) for p in printed]

    def match(i: int, j: int) -> bool:  # patterns[i:] against actual[j:]
        if i == len(patterns):
            return j == len(actual)
        pattern = patterns[i]
        if pattern is None:
            return any(match(i + 1, k) for k in range(j, len(actual) + 1))
        return j < len(actual) and pattern.fullmatch(actual[j]) is not None and match(i + 1, j + 1)

    assert match(0, 0), "README shows:\n" + "\n".join(shown) + "\n\nthe code printed:\n" + "\n".join(printed)


def test_the_masks_keep_counts_and_hide_timings():
    line = "19:46:59.232 Summary: 100 done, 0 lost, 100 executions; 1.08 s wall, 93 tasks/s"
    assert mask(line) == "HH:MM:SS.mmm Summary: 100 done, 0 lost, 100 executions; D.D s wall, N tasks/s"
    assert_output_matches(["a", "...", "... c 1"], ["a", "x", "y", "12:00:00.000 c 1"])
    with pytest.raises(AssertionError):
        assert_output_matches(["... c 1"], ["12:00:00.000 c 2"])
    with pytest.raises(AssertionError):
        assert_output_matches(["a"], ["a", "b"])


# -- running things -----------------------------------------------------------------------------


@pytest.fixture
def fresh_redis():
    """A redis-server of this test's own: nothing another test wrote, nothing shared."""
    with RedisServer() as server:
        yield server


def environment(redis_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def wqsim_argv(command: str) -> list[str]:
    """A README ``wqsim ...`` (or ``.venv/bin/wqsim ...``) command as run from this checkout."""
    words = shlex.split(command)
    assert words[0] in ("wqsim", ".venv/bin/wqsim"), command
    args = words[1:]
    if args[:1] == ["run"] and "--workers" not in args and default_workers() != 1:
        args += ["--workers", "1"]  # the README's samples are of a 2-core machine: one worker
    return [sys.executable, "-m", "wqsim", *args]


def run_shown(command: str, redis_url: str | None = None) -> list[str]:
    proc = subprocess.run(
        wqsim_argv(command), capture_output=True, text=True, timeout=TIMEOUT_S, env=environment(redis_url), cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (proc.stdout or proc.stderr).splitlines()


# -- Python blocks ------------------------------------------------------------------------------


def expected_stdout(source: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"#\s*->\s?(.*)$", source, flags=re.M)]


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.id)
def test_python_block_runs_and_prints_what_it_shows(block, fresh_redis, tmp_path):
    earlier = [b for b in PYTHON if b.section == block.section and b.line < block.line]
    source = "\n\n".join(b.text for b in [*earlier, block])
    script = tmp_path / f"readme_{block.line}.py"
    script.write_text(source + "\n")
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=environment(fresh_redis.url),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_output_matches(expected_stdout(source), proc.stdout.splitlines())


def test_there_are_python_blocks_to_test():
    assert {b.section for b in PYTHON} >= {"Sequential tasks", "Using it from Python"}


# -- shown output -------------------------------------------------------------------------------


def test_every_output_block_is_marked_and_every_marker_is_known():
    for block in BLOCKS:
        if not block.marker:
            assert block.lang not in ("", "text"), f"{block.id}: an output block needs an <!-- output: ... --> marker"
            continue
        kind, _, rest = block.marker.partition(":")
        assert kind in ("output", "output (numbers masked)", "not run"), f"{block.id}: unknown marker {block.marker!r}"
        assert rest.strip(), f"{block.id}: the marker {kind!r} must say {'why' if kind == 'not run' else 'what'}"
        if kind.startswith("output"):
            assert block.lang in ("", "text"), f"{block.id}: only output blocks take an output marker"
    marked = [b for b in BLOCKS if b.marker.startswith("not run")]
    assert len(marked) <= 4, "blocks that are not run should stay rare"


RUN_OUTPUTS = [b for b in OUTPUTS if b.marker.startswith("output")]


@pytest.mark.parametrize("block", RUN_OUTPUTS, ids=lambda b: b.id)
def test_shown_output_is_what_the_command_prints(block):
    kind, _, command = block.marker.partition(":")
    # No REDIS_URL: a run starts an embedded redis-server of its own, as `make run` does.
    printed = run_shown(command.strip())
    assert_output_matches(block.text.splitlines(), printed, numbers=kind == "output (numbers masked)")


def console_sessions(block: Block) -> list[tuple[str, list[str]]]:
    sessions: list[tuple[str, list[str]]] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            sessions.append((line[2:].strip(), []))
        else:
            assert sessions, f"{block.id}: a console block starts with a $ line"
            sessions[-1][1].append(line)
    return sessions


@pytest.mark.parametrize("block", CONSOLES, ids=lambda b: b.id)
def test_console_block_prints_what_it_shows(block):
    for command, shown in console_sessions(block):
        assert_output_matches(shown, run_shown(command))


# -- commands -----------------------------------------------------------------------------------

COMMAND = re.compile(
    r"(?:[A-Z_]+=\S+ )*(?:make|wqsim|\.venv/bin/wqsim|python -m|docker compose|docker-compose|jupyter|pip"
    r"|check-jsonschema|redis-cli)(?: .*)?"
)


def readme_commands() -> list[tuple[int, str]]:
    """(line, command) for every command the README shows, in shell blocks, console blocks and inline."""
    found: list[tuple[int, str]] = []
    for block in BLOCKS:
        for offset, line in enumerate(block.text.splitlines(), 1):
            if block.lang in SHELLS:
                command = re.sub(r"\s+#.*$", "", line).strip().removesuffix("&").strip()
                if command and not command.startswith("#"):
                    found.append((block.line + offset, command))
            elif block.lang == "console" and line.startswith("$ "):
                found.append((block.line + offset, line[2:].strip()))
    in_block = False
    for number, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            continue
        for span in re.findall(r"`([^`]+)`", line.replace("\\|", "\x00")):
            span = span.replace("\x00", "\\|")
            if COMMAND.fullmatch(span):
                found.append((number, span))
    return found


CI = ".ci/run"
THIS = "tests/test_readme.py::"

# Where each README command is run. A value is ".ci/run" (the line is in that script), a test
# ("tests/<file>.py::<test>"), or several of them.
WHERE_EXERCISED: dict[str, tuple[str, ...]] = {
    # Run without Docker
    "make run": (CI, THIS + "test_shown_output_is_what_the_command_prints"),
    "make test": (CI,),
    "make lint": (CI,),
    "make bench": ("tests/test_readme.py::test_benchmarks_are_not_run_by_the_tests",),
    'make bench ARGS="--compare REV"': (
        "tests/test_benchmarks_compare.py::test_a_probe_measures_the_tree_it_was_given",
        "tests/test_benchmarks_compare.py::test_the_verdict_reads_throughput_up_and_latency_down",
    ),
    "wqsim sim": ("tests/test_sim.py::test_wqsim_sim_refuses_bad_input_in_one_line_with_exit_2",),
    "wqsim sim --tasks 2000 --workers 8 --kind noop --batch-size 10": (
        THIS + "test_shown_output_is_what_the_command_prints",
        "tests/test_sim.py::test_wqsim_sim_prints_the_summary_lines_of_a_run_marked_as_simulated",
    ),
    'make bench ARGS="--sim"': (
        "tests/test_sim.py::test_the_knee_sweep_flattens_where_the_profile_says_redis_saturates_and_batching_moves_it",
    ),
    "python -m benchmarks --sim": (
        "tests/test_sim.py::test_the_knee_sweep_flattens_where_the_profile_says_redis_saturates_and_batching_moves_it",
    ),
    'make run ARGS="--tasks 1000 --workers 3 -q"': (
        "tests/test_cli.py::test_run_of_1000_tasks_with_3_workers_ends_all_done_none_lost_none_duplicated",
    ),
    ".venv/bin/wqsim run --help": (THIS + "test_run_help_lists_the_options",),
    ".venv/bin/wqsim": (THIS + "test_wqsim_alone_prints_the_help_and_exits_2",),
    "python -m wqsim": (THIS + "test_wqsim_alone_prints_the_help_and_exits_2",),
    "wqsim": (THIS + "test_wqsim_alone_prints_the_help_and_exits_2",),
    # Task kinds of your own: tests/test_imports.py runs the wqsim script from a project directory
    "wqsim work --import myapp.tasks": (
        "tests/test_imports.py::test_work_with_import_runs_the_modules_kind_imported_once_in_the_parent_before_forking",
    ),
    "wqsim run --import myapp.tasks --kind resize": ("tests/test_imports.py::test_import_flags_add_to_wqsim_imports",),
    "WQSIM_IMPORTS=myapp.tasks,myapp.more wqsim work": (
        "tests/test_imports.py::test_run_takes_its_kind_from_a_module_named_in_wqsim_imports",
        "tests/test_imports.py::test_wqsim_imports_is_comma_separated_and_flags_add_to_it_each_module_once",
    ),
    # Docker Compose: tests/test_compose.py runs each service's command natively
    "docker compose up": (
        "tests/test_compose.py::test_docker_compose_config_accepts_the_file_with_and_without_each_profile",
    ),
    "docker compose up app": ("tests/test_compose.py::test_app_service_runs_the_seed_scenario",),
    "JUPYTER_TOKEN=pick-a-secret docker compose up lab": (
        "tests/test_compose.py::test_lab_service_serves_jupyterlab_that_refuses_requests_without_the_token",
    ),
    "docker compose --profile cluster up --scale worker=4": (
        "tests/test_compose.py::test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit",
    ),
    "redis-cli ping": ("tests/test_compose.py::test_compose_file_has_the_promised_shape",),
    "jupyter lab --notebook-dir=/app/notebooks": (
        "tests/test_compose.py::test_lab_service_serves_jupyterlab_that_refuses_requests_without_the_token",
    ),
    "docker compose logs lab": (
        "tests/test_compose.py::test_lab_service_serves_jupyterlab_that_refuses_requests_without_the_token",
    ),
    "wqsim generate --queue cluster --tasks 400 --fresh": (
        "tests/test_compose.py::test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit",
    ),
    "wqsim work --queue cluster --workers 1 --import wqsim.example_tasks": (
        "tests/test_compose.py::test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit",
    ),
    "wqsim reap --queue cluster": (
        "tests/test_compose.py::test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit",
    ),
    "wqsim listen --queue cluster": (
        "tests/test_compose.py::test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit",
    ),
    "docker compose stop": (
        "tests/test_compose.py::test_a_worker_stopped_by_sigterm_finishes_the_task_in_hand_and_hands_back_the_rest",
    ),
    "check-jsonschema --builtin-schema vendor.compose-spec compose.yaml": (
        "tests/test_compose.py::test_compose_file_is_valid_against_the_compose_specification",
    ),
    "docker-compose -f compose.yaml config -q": (
        "tests/test_compose.py::test_docker_compose_config_accepts_the_file_with_and_without_each_profile",
    ),
    # One role per command: the block is run as written, on a redis-server of the test's own
    "export REDIS_URL=redis://127.0.0.1:6379/0": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim listen --queue demo": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim reap --queue demo": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim work --queue demo --workers 3": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim generate --queue demo --tasks 1000": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim status --queue demo": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim work --queue demo --once": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim work": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim listen": (THIS + "test_one_role_per_command_block_runs_as_written",),
    # Redis Cluster
    "wqsim generate --shards S": (
        "tests/test_cluster.py::test_generate_and_work_with_shards_as_separate_commands_finish_every_shard",
    ),
    "wqsim work --shards S": (
        "tests/test_cluster.py::test_generate_and_work_with_shards_as_separate_commands_finish_every_shard",
    ),
    "wqsim listen --shards S": ("tests/test_shards.py::test_status_reap_and_listen_with_shards_cover_every_shard",),
    "wqsim reap --shards S": ("tests/test_shards.py::test_status_reap_and_listen_with_shards_cover_every_shard",),
    "wqsim status --shards S": ("tests/test_shards.py::test_status_reap_and_listen_with_shards_cover_every_shard",),
    "wqsim acl --queue NAME --shards S": (
        "tests/test_security.py::test_wqsim_acl_with_shards_grants_the_queue_and_every_shard_and_nothing_more",
    ),
    "wqsim status --queue q:2": (
        "tests/test_cluster.py::test_generate_and_work_with_shards_as_separate_commands_finish_every_shard",
    ),
    "wqsim reap --queue q:2 --once": (
        "tests/test_cluster.py::test_generate_and_work_with_shards_as_separate_commands_finish_every_shard",
    ),
    'make bench ARGS="--cluster"': (
        "tests/test_cluster.py::test_the_cluster_benchmark_measures_every_layout_with_a_clean_audit",
    ),
    "python -m wqsim.local_cluster --masters 3": (
        "tests/test_local_cluster.py::test_the_module_serves_until_sigterm_then_stops_the_cluster",
    ),
    "wqsim run --redis-url redis://127.0.0.1:PORT/0 --shards 6 --chaos": (
        "tests/test_cluster.py::test_wqsim_run_with_chaos_on_6_shards_of_the_cluster_exits_0_with_a_clean_audit",
    ),
    "docker compose --profile redis-cluster up": (
        "tests/test_compose.py::test_redis_cluster_profile_nodes_and_init_form_a_cluster_that_is_ok",
    ),
    # Use your own Redis
    "REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/wqsim run": (
        "tests/test_compose.py::test_app_service_runs_the_seed_scenario",
    ),
    ".venv/bin/wqsim run --redis-url redis://:password@redis.example:6379/2": (
        "tests/test_security.py::test_every_cli_command_runs_as_a_user_with_exactly_the_rule",
    ),
    # Command line (synopses)
    "wqsim run": (THIS + "test_shown_output_is_what_the_command_prints",),
    "wqsim run [--tasks N] [--workers N] [--duration-ms D] [--queue NAME] [--redis-url URL]": (
        "tests/test_cli.py::test_run_prints_the_seed_sequence_and_a_summary",
    ),
    "wqsim run --chaos [--seed S]": (
        "tests/test_outages.py::test_two_chaos_runs_with_one_seed_inject_the_same_faults",
    ),
    "wqsim run --batch-size B": (
        "tests/test_security.py::test_every_cli_command_runs_as_a_user_with_exactly_the_rule",
        "tests/test_cli.py::test_run_with_work_packages_completes_every_task",
    ),
    "wqsim run --graph chain\\|fanout\\|diamond\\|layered [--tasks N] [--allow-failure]": (
        "tests/test_cli.py::test_run_graph_ends_with_a_clean_audit_and_prints_makespan_against_the_critical_path",
    ),
    "wqsim generate [--tasks N] [--package-size B] [--graph G] [--task-timeout-s S] [--fresh]": (
        "tests/test_retention.py::test_wqsim_generate_sets_the_queues_retention_policy",
        "tests/test_cli.py::test_run_with_work_packages_completes_every_task",
    ),
    "wqsim work [--workers N] [--once] [--task-timeout-s S]": (
        THIS + "test_one_role_per_command_block_runs_as_written",
    ),
    "wqsim listen [--workers N]": (THIS + "test_one_role_per_command_block_runs_as_written",),
    "wqsim reap [--once] [--interval-s S]": ("tests/test_cli.py::test_status_and_reap_once_report_on_a_queue",),
    "wqsim status": ("tests/test_cli.py::test_status_and_reap_once_report_on_a_queue",),
    "wqsim acl --queue NAME": (THIS + "test_shown_output_is_what_the_command_prints",),
    "wqsim acl --queue NAME [--user USER]": (
        "tests/test_security.py::test_wqsim_acl_prints_one_setuser_line_without_a_password",
    ),
    # Reliability, Storage
    ".venv/bin/wqsim run --chaos --tasks 2000 --workers 3 --seed 1 -q": (
        THIS + "test_shown_output_is_what_the_command_prints",
        "tests/test_outages.py::test_two_chaos_runs_with_one_seed_inject_the_same_faults",
    ),
    "python -m benchmarks.generate_memory": ("tests/test_readme.py::test_benchmarks_are_not_run_by_the_tests",),
    "wqsim status --expected N": (
        "tests/test_storage.py::test_after_an_empty_restart_the_expected_count_makes_every_task_lost",
    ),
    "python -m benchmarks.retention": ("tests/test_readme.py::test_benchmarks_are_not_run_by_the_tests",),
    # Security
    "REDIS_URL='rediss://wqsim-demo:secret@redis.example:6380/0?ssl_ca_certs=/etc/wqsim/ca.pem' wqsim work": (
        "tests/test_security.py::test_a_full_run_passes_over_tls_with_the_ca_named_in_the_url",
    ),
    "redis-cli CONFIG SET maxmemory-policy noeviction": (THIS + "test_the_eviction_fix_is_the_command_shown",),
    # Sequential tasks
    "wqsim run --graph layered --tasks 30 -q": (THIS + "test_console_block_prints_what_it_shows",),
    # The notebooks
    'pip install -e ".[notebook]"': (
        "tests/test_compose.py::test_dockerfile_installs_this_package_with_its_notebook_extra_as_a_non_root_user",
    ),
    "jupyter lab notebooks/": (
        "tests/test_compose.py::test_lab_service_serves_jupyterlab_that_refuses_requests_without_the_token",
    ),
    "jupyter nbconvert --to notebook --execute --inplace notebooks/NN-*.ipynb": (
        "tests/test_notebooks.py::test_each_notebook_is_committed_with_the_outputs_of_a_clean_run",
    ),
}

# Commands no test runs, each with its reason: keep this short.
NOT_EXERCISED = {
    "make bench": "minutes of measurement against rq, Celery and Huey, installed by the bench extra",
    "python -m benchmarks.generate_memory": "a memory benchmark of millions of tasks",
    "python -m benchmarks.retention": "a memory benchmark of 1,000,000 tasks",
}


def test_every_readme_command_is_exercised():
    commands = readme_commands()
    missing = sorted({c for _, c in commands if c not in WHERE_EXERCISED})
    assert not missing, "README commands that no test or .ci/run exercises (add them to WHERE_EXERCISED):\n" + (
        "\n".join(f"  L{n}: {c}" for n, c in commands if c in missing)
    )
    stale = sorted(set(WHERE_EXERCISED) - {c for _, c in commands})
    assert not stale, f"WHERE_EXERCISED lists commands the README no longer shows: {stale}"
    ci_lines = {line.strip() for line in (ROOT / CI).read_text().splitlines()}
    for command, places in WHERE_EXERCISED.items():
        assert places, command
        for place in places:
            if place == CI:
                assert command in ci_lines, f"{command!r} is not run by {CI}"
                continue
            path, _, name = place.partition("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), flags=re.M), (
                f"{command!r}: {place} does not exist"
            )


def test_benchmarks_are_not_run_by_the_tests():
    """The benchmark commands are listed, with why no test runs them; their modules exist."""
    for command, reason in NOT_EXERCISED.items():
        assert reason and command in WHERE_EXERCISED
        if command.startswith("python -m "):
            assert (ROOT / (command.split()[2].replace(".", "/") + ".py")).exists(), command
    assert "bench:" in (ROOT / "Makefile").read_text()


def test_wqsim_alone_prints_the_help_and_exits_2():
    proc = subprocess.run(
        [sys.executable, "-m", "wqsim"], capture_output=True, text=True, timeout=TIMEOUT_S, env=environment(None)
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: wqsim ")
    for command in ("run", "generate", "work", "listen", "reap", "status", "acl"):
        assert re.search(rf"^    {command} ", proc.stderr, flags=re.M), command
    assert proc.stderr.splitlines()[-1] == "wqsim: error: the following arguments are required: command"


def test_run_help_lists_the_options():
    proc = subprocess.run(wqsim_argv("wqsim run --help"), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    for option in ("--tasks", "--workers", "--duration-ms", "--queue", "--redis-url", "--chaos", "--graph"):
        assert option in proc.stdout


def test_one_role_per_command_block_runs_as_written(fresh_redis):
    """The block's commands in order, '&' ones in the background (stopped with SIGTERM at the end),
    on this test's own server and with 100 tasks instead of 1000."""
    (block,) = [b for b in BLOCKS if b.lang in SHELLS and b.section == "One role per command"]
    env = environment(None)
    background: list[subprocess.Popen[str]] = []
    ran: list[str] = []
    try:
        for line in block.text.splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                assert (name, value) == ("REDIS_URL", "redis://127.0.0.1:6379/0")
                env[name] = fresh_redis.url  # never the shared 127.0.0.1:6379
                continue
            command = command.replace("--tasks 1000", "--tasks 100")
            if command.endswith("&"):
                argv = wqsim_argv(command.removesuffix("&").strip())
                background.append(
                    subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                )
            else:
                proc = subprocess.run(wqsim_argv(command), env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
                assert proc.returncode == 0, f"{command}: {proc.stderr[-2000:]}"
            ran.append(command.split(" --")[0])
        assert ran == ["wqsim listen", "wqsim reap", "wqsim work", "wqsim generate", "wqsim status", "wqsim work"]
        status = subprocess.run(wqsim_argv("wqsim status --queue demo"), env=env, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        report = audit(Queue(connect(fresh_redis.url), "demo"))
        assert report.clean and report.done == 100
    finally:
        for proc in background:
            proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=TIMEOUT_S) for proc in background]
        for proc in background:
            proc.communicate()
    assert codes == [0, 0, 0], "listen, reap and work stop with exit 0 on SIGTERM"


def test_the_eviction_fix_is_the_command_shown(fresh_redis):
    (fix,) = [c for _, c in readme_commands() if c.startswith("redis-cli CONFIG SET maxmemory-policy")]
    connect(fresh_redis.url).config_set("maxmemory-policy", "allkeys-lru")
    generate = wqsim_argv("wqsim generate --queue evict --tasks 5")
    refused = subprocess.run(generate, env=environment(fresh_redis.url), capture_output=True, text=True)
    assert refused.returncode == 2 and "noeviction" in refused.stderr
    port = fresh_redis.url.rsplit(":", 1)[1].split("/")[0]
    redis_cli = subprocess.run(["redis-cli", "-p", port, *shlex.split(fix)[1:]], capture_output=True, text=True)
    assert redis_cli.stdout.strip() == "OK", redis_cli.stderr
    accepted = subprocess.run(generate, env=environment(fresh_redis.url), capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr


def test_the_readme_describes_the_seed_in_its_own_words_and_never_links_to_it():
    assert "../shared" not in README.read_text()
