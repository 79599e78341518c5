"""Seedable failure injection: the faults the reliability design must survive.

Faults are drawn from (seed, task id, attempt) alone, and each one strands
only the task it was drawn for (a worker that may crash or hang claims
nothing ahead), so one seed injects the same faults on every run: the same
(task, attempt, fault) triples, hence the same executions, retries, dead
letters and replaced workers. Each injection is recorded in the events stream
as a 'fault' entry, so a run can be compared with another.

Chaos wraps a handler (``wrap``): the worker's loop knows nothing of it. What
a fault does to the worker (record it, end the process, freeze the heartbeat)
the worker supplies as ``Effects``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import ChaosConfig

if TYPE_CHECKING:
    from .queue import Queue
    from .task import Task

Handler = Callable[["Task"], object]


class InjectedFailure(RuntimeError):
    """Raised in place of a handler's result when chaos says the attempt fails."""


@dataclass(frozen=True)
class Faults:
    """The faults drawn for one attempt of one task."""

    crash: bool = False
    hang: bool = False
    fail: bool = False
    straggle: bool = False

    def __bool__(self) -> bool:
        return self.crash or self.hang or self.fail or self.straggle

    def names(self) -> str:
        """The faults drawn, as recorded in the events stream: e.g. 'hang straggle'."""
        return " ".join(name for name in ("crash", "hang", "fail", "straggle") if getattr(self, name))


def draw(chaos: ChaosConfig, task_id: str, attempt: int) -> Faults:
    """Faults for (task, attempt), reproducible from the seed alone."""
    if not chaos.active:
        return Faults()
    rng = random.Random(f"{chaos.seed}:{task_id}:{attempt}")
    return Faults(
        crash=rng.random() < chaos.crash_p,
        hang=rng.random() < chaos.hang_p,
        fail=rng.random() < chaos.fail_p,
        straggle=rng.random() < chaos.straggler_p,
    )


class Effects(Protocol):
    """What a fault does to the worker running the attempt."""

    def record(self, task: Task, faults: Faults) -> None:
        """Note the faults drawn for this attempt in the events stream."""

    def crash(self, task: Task) -> None:
        """Die holding the task, as a killed process would; never returns."""

    def frozen(self, task: Task) -> AbstractContextManager[object]:
        """While inside, the whole worker stalls, its heartbeat included."""
        ...


def wrap(handler: Handler, chaos: ChaosConfig, effects: Effects) -> Handler:
    """``handler`` with the faults that ``chaos`` draws for each attempt injected around it.

    A crash comes half-way through the task's ``duration_ms``; a hang stalls
    the worker for ``hang_s`` before the handler runs; a straggler takes
    ``straggler_factor`` times as long; a failure raises InjectedFailure in
    place of the handler's result.
    """
    if not chaos.active:
        return handler

    def with_faults(task: Task) -> object:
        faults = draw(chaos, task.id, task.attempt)
        if faults:
            effects.record(task, faults)
        if faults.crash:
            time.sleep(float(task.payload.get("duration_ms", 0)) / 2000)
            effects.crash(task)
        if faults.hang:
            with effects.frozen(task):
                time.sleep(chaos.hang_s)
        started = time.perf_counter()
        result = handler(task)
        if faults.straggle:
            time.sleep((chaos.straggler_factor - 1) * (time.perf_counter() - started))
        if faults.fail:
            raise InjectedFailure(f"injected failure (chaos seed {chaos.seed})")
        return result

    return with_faults


def injected(queue: Queue) -> Counter[str]:
    """How many attempts of a queue's run each kind of fault was injected into (from its events)."""
    return Counter(kind for event in queue.events() if event["event"] == "fault" for kind in event["detail"].split())
