"""Seedable failure injection: the faults the reliability design must survive.

Faults are drawn from (seed, task id, attempt) alone, and each one strands
only the task it was drawn for (a worker that may crash or hang claims
nothing ahead), so one seed injects the same faults on every run: the same
(task, attempt, fault) triples, hence the same executions, retries, dead
letters and replaced workers. Each injection is recorded in the events stream
as a 'fault' entry, so a run can be compared with another.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ChaosConfig

if TYPE_CHECKING:
    from .queue import Queue


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


def injected(queue: Queue) -> Counter[str]:
    """How many attempts of a queue's run each kind of fault was injected into (from its events)."""
    return Counter(kind for event in queue.events() if event["event"] == "fault" for kind in event["detail"].split())
