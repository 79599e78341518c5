"""A simulated run's report: the same numbers, frame and Summary line as a real run's, marked as simulated."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..audit import Audit
from ..config import RunConfig
from ..graph import Bounds
from ..metrics import COLUMNS, makespan
from ..runner import makespan_line, summary_line
from .profile import CostProfile

if TYPE_CHECKING:
    from .model import Model

SIM_QUEUE_SUFFIX = " (simulated)"


@dataclass(frozen=True)
class SimReport:
    """What ``wqsim.sim.simulate`` found, with the fields of ``wqsim.RunReport`` that a model can know.

    ``wall_s`` is virtual time from the pool's start to the last worker's exit;
    ``redis_busy_s`` how long the Redis thread worked in it, so ``redis_utilisation``
    says how near Redis is to being the bottleneck. ``events`` counts the
    simulation's own steps (its cost, not the run's).
    """

    config: RunConfig
    profile: CostProfile
    audit: Audit
    wall_s: float
    makespan_s: float
    restarts: int
    reaped: int
    heartbeats: int
    redis_busy_s: float
    redis_calls: int
    finished: bool  # every worker exited (False: the virtual-time limit came first)
    bounds: Bounds | None = None
    attempts_frame: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COLUMNS), repr=False)

    simulated = True

    @property
    def tasks_per_s(self) -> float:
        return self.audit.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def makespan_tasks_per_s(self) -> float:
        return self.audit.done / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def redis_utilisation(self) -> float:
        return self.redis_busy_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.audit.clean and self.finished

    def attempts(self) -> pd.DataFrame:
        """The attempts DataFrame, in the schema of ``wqsim.metrics.attempts``: every metric and plot takes it."""
        return self.attempts_frame.copy()

    def summary(self) -> str:
        return summary_line(self.audit, self.wall_s, self.tasks_per_s, label="Summary (simulated)")

    def makespan_summary(self) -> str:
        return makespan_line(self.makespan_s, self.bounds, label="Makespan (simulated)")

    def redis_summary(self) -> str:
        return (
            f"Redis (simulated): {self.redis_calls:,} calls, busy {self.redis_busy_s:.3f} s of "
            f"{self.wall_s:.3f} s ({self.redis_utilisation:.0%})"
        )


def attempts_frame(model: Model, queue: str) -> pd.DataFrame:
    """The model's records as an attempts DataFrame (``metrics.COLUMNS``), sorted as ``metrics.frame`` sorts."""
    rec = model.records
    ids = np.asarray(model.ids, dtype=object)
    tasks = np.asarray(rec.task, dtype=np.int64)
    from .model import STATUS_NAMES, TERMINAL

    # Tasks that never ended (the virtual-time limit came first) show in their current state.
    left = [i for i, status in enumerate(model.status) if status not in TERMINAL]
    all_tasks = np.concatenate([tasks, np.asarray(left, dtype=np.int64)])
    enqueued = np.asarray(model.enqueued_at, dtype=float)
    df = pd.DataFrame(
        {
            "queue": queue,
            "task_id": ids[all_tasks],
            "kind": model.config.kind,
            "package": "",
            "attempt": np.asarray(rec.attempt + [model.attempt[i] for i in left], dtype=np.int64),
            "worker": rec.worker + [model.worker_of[i] for i in left],
            "enqueued_at": enqueued[all_tasks],
            "started_at": np.asarray(rec.started + [model.started_at[i] for i in left], dtype=float),
            "finished_at": np.asarray(rec.finished + [np.nan] * len(left), dtype=float),
            "status": rec.status + [STATUS_NAMES[model.status[i]] for i in left],
            "error": rec.error + [model.error[i] for i in left],
        },
        columns=COLUMNS,
    )
    return df.sort_values(["started_at", "finished_at", "task_id"], na_position="last").reset_index(drop=True)


def report(model: Model, finished: bool, bounds: Bounds | None) -> SimReport:
    """The report of a model that has run."""
    from .model import CANCELLED, DEAD, DONE, QUEUED, RUNNING, SCHEDULED, WAITING

    counts = np.bincount(np.asarray(model.status, dtype=np.int64), minlength=7)
    df = attempts_frame(model, model.config.queue + SIM_QUEUE_SUFFIX)
    audit = Audit(
        generated=len(model.ids),
        done=int(counts[DONE]),
        dead=int(counts[DEAD]),
        cancelled=int(counts[CANCELLED]),
        queued=int(counts[QUEUED]),
        running=int(counts[RUNNING]),
        scheduled=int(counts[SCHEDULED]),
        waiting=int(counts[WAITING]),
        lost=0,  # the model applies every outcome under the fencing rule: nothing is lost or done twice
        completed_twice=0,
        executions=model.executions,
        completions=int(counts[DONE]),
        rejected=model.rejected,
        expired=model.expired,
    )
    return SimReport(
        config=model.config,
        profile=model.profile,
        audit=audit,
        wall_s=model.last_exit if finished else model.env.now,
        makespan_s=makespan(df),
        restarts=model.restarts,
        reaped=model.reaped,
        heartbeats=model.heartbeats,
        redis_busy_s=model.redis_busy_s,
        redis_calls=model.calls,
        finished=finished,
        bounds=bounds,
        attempts_frame=df,
    )
