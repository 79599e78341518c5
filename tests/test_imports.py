"""Task kinds of your own from the command line: ``--import MODULE`` and ``$WQSIM_IMPORTS``.

Each test writes a small project to ``tmp_path`` and runs the ``wqsim`` script
from there, as a user would from their project directory: the script alone does
not put the current directory on sys.path, so these also show that wqsim does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wqsim import Queue, Status, connect, make_tasks
from wqsim.handlers import modules_to_import

ROOT = Path(__file__).parent.parent
WQSIM = Path(sys.executable).parent / "wqsim"  # the console script, not python -m (which adds the cwd itself)


def write_project(root: Path) -> None:
    """myapp/tasks.py registers "shout"; otherapp.py registers "whisper". Each notes its
    pid in imported.log when imported, and each handler returns its pid and parent's."""
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    for path, kind, method in (("myapp/tasks.py", "shout", "upper"), ("otherapp.py", "whisper", "lower")):
        (root / path).write_text(
            textwrap.dedent(
                f"""
                import os

                import wqsim

                with open("imported.log", "a") as log:
                    log.write(f"{path} {{os.getpid()}}\\n")


                @wqsim.register("{kind}")
                def {kind}(task):
                    text = task.payload.get("text", task.id)
                    return {{"text": text.{method}(), "pid": os.getpid(), "ppid": os.getppid()}}
                """
            )
        )


def wqsim(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "WQSIM_IMPORTS")}
    full_env["PYTHONPATH"] = str(ROOT)  # this checkout's wqsim, whatever is installed
    full_env.update(env or {})
    return subprocess.run([str(WQSIM), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=full_env)


def enqueue(queue: Queue, kind: str, count: int, text: str) -> list[str]:
    ids = queue.allocate_ids(count)
    queue.enqueue(make_tasks(ids, kind=kind, payload={"text": text}))
    return ids


def test_wqsim_imports_is_comma_separated_and_flags_add_to_it_each_module_once():
    environ = {"WQSIM_IMPORTS": " myapp.tasks, ,otherapp "}
    assert modules_to_import(["third", "myapp.tasks"], environ) == ["myapp.tasks", "otherapp", "third"]
    assert modules_to_import([], {}) == []


@pytest.mark.real_redis
def test_work_with_import_runs_the_modules_kind_imported_once_in_the_parent_before_forking(
    redis_url, queue_name, tmp_path
):
    write_project(tmp_path)
    queue = Queue(connect(redis_url), queue_name)
    ids = enqueue(queue, "shout", 6, "hi")
    proc = wqsim(
        "work", "--once", "--workers", "2", "--import", "myapp.tasks", "--redis-url", redis_url, "--queue", queue_name,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    tasks = [queue.task(i) for i in ids]
    assert all(t.status is Status.DONE and t.result["text"] == "HI" for t in tasks)
    (line,) = (tmp_path / "imported.log").read_text().splitlines()  # imported once, by the CLI process
    parent = int(line.split()[1])
    assert {t.result["ppid"] for t in tasks} == {parent}  # run by workers forked from it
    assert parent not in {t.result["pid"] for t in tasks}


@pytest.mark.real_redis
def test_run_takes_its_kind_from_a_module_named_in_wqsim_imports(redis_url, queue_name, tmp_path):
    write_project(tmp_path)
    proc = wqsim(
        "run", "--kind", "whisper", "--tasks", "8", "--workers", "2", "-q", "--redis-url", redis_url,
        "--queue", queue_name,
        cwd=tmp_path,
        env={"WQSIM_IMPORTS": "myapp.tasks,otherapp"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Summary: 8 done, 0 dead, 0 lost, 0 completed twice, 8 executions" in proc.stderr
    assert sorted(line.split()[0] for line in (tmp_path / "imported.log").read_text().splitlines()) == [
        "myapp/tasks.py",
        "otherapp.py",
    ]


@pytest.mark.real_redis
def test_import_flags_add_to_wqsim_imports(redis_url, queue_name, tmp_path):
    write_project(tmp_path)
    queue = Queue(connect(redis_url), queue_name)
    ids = enqueue(queue, "shout", 3, "Mixed") + enqueue(queue, "whisper", 3, "Mixed")
    proc = wqsim(
        "work", "--once", "--workers", "1", "--import", "otherapp", "--redis-url", redis_url, "--queue", queue_name,
        cwd=tmp_path,
        env={"WQSIM_IMPORTS": "myapp.tasks"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [queue.task(i).result["text"] for i in ids] == ["MIXED"] * 3 + ["mixed"] * 3


@pytest.mark.parametrize(
    ("module", "source", "why"),
    [
        ("nosuch.tasks", None, "ModuleNotFoundError: No module named 'nosuch'"),
        ("broken", "raise RuntimeError('no settings:\\nset APP_ENV')", "RuntimeError: no settings:; set APP_ENV"),
        ("typo", "def f(:\n", "SyntaxError: "),
    ],
)
@pytest.mark.parametrize("how", ["work --import", "run --import", "work with WQSIM_IMPORTS"])
def test_a_module_that_cannot_be_imported_is_one_line_naming_it_and_exit_code_2(tmp_path, module, source, why, how):
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    command, _, rest = how.partition(" ")
    if rest == "--import":
        proc = wqsim(command, "--import", module, cwd=tmp_path)
    else:
        proc = wqsim(command, cwd=tmp_path, env={"WQSIM_IMPORTS": module})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"wqsim: error: cannot import {module!r}: {why}"), proc.stderr


@pytest.mark.parametrize("command", ["run", "generate"])
def test_an_unknown_kind_is_refused_before_anything_is_written_pointing_at_import(tmp_path, command):
    proc = wqsim(command, "--kind", "shout", "--redis-url", "redis://127.0.0.1:1/0", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (
        "wqsim: error: unknown task kind 'shout' (registered: noop, sleep); "
        "name the module that registers it with --import MODULE or $WQSIM_IMPORTS\n"
    )
