"""Chaos wraps a handler (wqsim.chaos.wrap): the faults are injected around it, not in the worker's loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from wqsim import ChaosConfig, Task
from wqsim import chaos as chaos_mod


class Recorder:
    """Effects that only note what the faults did."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def record(self, task: Task, faults: chaos_mod.Faults) -> None:
        self.seen.append(f"record {task.id} {faults.names()}")

    def crash(self, task: Task) -> None:
        self.seen.append(f"crash {task.id}")
        raise SystemExit  # as a dying process would: the handler never runs

    @contextlib.contextmanager
    def frozen(self, task: Task) -> Iterator[None]:
        self.seen.append(f"frozen {task.id}")
        yield
        self.seen.append(f"thawed {task.id}")


def handler(task: Task) -> str:
    return f"ran {task.id}"


def test_without_chaos_the_handler_is_returned_unwrapped():
    assert chaos_mod.wrap(handler, ChaosConfig(), Recorder()) is handler


def test_an_injected_failure_replaces_the_result_and_is_recorded():
    effects = Recorder()
    wrapped = chaos_mod.wrap(handler, ChaosConfig(seed=1, fail_p=1.0), effects)
    with pytest.raises(chaos_mod.InjectedFailure):
        wrapped(Task(id="7", kind="noop"))
    assert effects.seen == ["record 7 fail"]


def test_a_hang_freezes_the_worker_before_the_handler_runs_then_the_handler_runs():
    effects = Recorder()
    wrapped = chaos_mod.wrap(handler, ChaosConfig(seed=1, hang_p=1.0, hang_s=0.001), effects)
    assert wrapped(Task(id="7", kind="noop")) == "ran 7"
    assert effects.seen == ["record 7 hang", "frozen 7", "thawed 7"]


def test_a_crash_ends_the_attempt_before_the_handler_returns():
    effects = Recorder()
    wrapped = chaos_mod.wrap(handler, ChaosConfig(seed=1, crash_p=1.0), effects)
    with pytest.raises(SystemExit):
        wrapped(Task(id="7", kind="noop", payload={"duration_ms": 0}))
    assert effects.seen == ["record 7 crash", "crash 7"]
