"""The simulation checked against the real engine: one configuration run both ways, the errors compared.

Each grid point names what it is judged on, with the issue's targets:
the makespan of sleep workloads (5 %), the throughput of no-op work (15 %;
sleep 0 is no-op work: it returns at once, as the seed's Go time.Sleep(0)
does, so its makespan is all overhead), p50 and p95 queue wait under Poisson arrivals (15 %), and
re-executions under chaos (20 %). ``tests/test_sim_accuracy.py`` fails a
point at twice its target (the host is noisy); ``python -m benchmarks sim``
prints the whole table for the README.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from .. import metrics
from ..config import ChaosConfig, RunConfig, WorkerConfig
from ..retention import Retention
from ..runner import run
from .profile import CostProfile
from .report import SimReport

KEEP_ALL = Retention(keep_done=None)  # every task's times: a makespan over part of the run would be wrong
TARGETS = {"makespan": 0.05, "throughput": 0.15, "p50 wait": 0.15, "p95 wait": 0.15, "re-executions": 0.20}


@dataclass(frozen=True)
class Point:
    """One configuration of the grid and what it is judged on."""

    name: str
    config: RunConfig
    judged_on: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    point: Point
    measured: dict[str, float]
    predicted: dict[str, float]

    def error(self, what: str) -> float:
        """Relative error of the prediction: (predicted - measured) / measured."""
        real = self.measured[what]
        return (self.predicted[what] - real) / real if real else float("inf")

    def worst(self) -> float:
        """The largest error over the point's measures, as a share of each one's target."""
        return max(abs(self.error(w)) / TARGETS[w] for w in self.point.judged_on)


def _tasks(workers: int, batch: int, duration_ms: float) -> int:
    """Enough tasks for a real run of about half a second (no-op work: more, for the larger batches)."""
    if duration_ms >= 10:
        return max(50, 2 * batch) * workers  # two batches each at least: the prefetch rule shows
    if duration_ms >= 1:
        return 400 * workers
    return {1: 2000, 10: 5000}.get(batch, 10_000) * workers


def grid(queue: str = "sim-accuracy") -> list[Point]:
    """Workers 1-3, batch 1/10/100, sleep 0/1/10 ms; Poisson at utilisation 0.5 and 0.8; chaos off and on."""
    points = []
    for workers, batch, sleep_ms in itertools.product((1, 2, 3), (1, 10, 100), (0.0, 1.0, 10.0)):
        judged = ("throughput",) if sleep_ms == 0 else ("makespan",)
        config = RunConfig(
            queue=queue,
            retention=KEEP_ALL,
            tasks=_tasks(workers, batch, sleep_ms),
            duration_ms=sleep_ms,
            workers=workers,
            worker=WorkerConfig(batch_size=batch),
        )
        points.append(Point(f"{workers}w batch {batch} sleep {sleep_ms:g} ms", config, judged))
    for workers, utilisation in itertools.product((1, 2), (0.5, 0.8)):
        rate = utilisation * workers / 0.010
        config = RunConfig(
            queue=queue, tasks=int(rate * 3), duration_ms=10.0, workers=workers, arrival_rate=rate, arrival_seed=7
        )
        points.append(Point(f"{workers}w Poisson at utilisation {utilisation:g}", config, ("p50 wait", "p95 wait")))
    chaos = ChaosConfig(seed=3, fail_p=0.1, crash_p=0.03, hang_p=0.03, hang_s=0.4)
    for workers in (1, 3):
        config = RunConfig(
            queue=queue,
            tasks=150,
            duration_ms=5.0,
            workers=workers,
            max_attempts=5,
            worker=WorkerConfig(lease_s=0.2),
            chaos=chaos,
        )
        points.append(Point(f"{workers}w chaos (fail, crash, hang)", config, ("re-executions", "makespan")))
    return points


def measures(report: object, config: RunConfig) -> dict[str, float]:
    """The figures a point is judged on, from a real RunReport or a SimReport alike."""
    df = report.attempts()  # type: ignore[attr-defined]
    audit = report.audit  # type: ignore[attr-defined]
    waits = metrics.latencies(df)["wait"].to_numpy()
    return {
        "makespan": float(report.makespan_s),  # type: ignore[attr-defined]
        "throughput": float(report.makespan_tasks_per_s),  # type: ignore[attr-defined]
        "p50 wait": float(np.percentile(waits, 50)) if len(waits) else 0.0,
        "p95 wait": float(np.percentile(waits, 95)) if len(waits) else 0.0,
        "re-executions": float(audit.executions - audit.terminal),
    }


def compare(point: Point, profile: CostProfile, url: str | None = None) -> Comparison:
    """Run ``point`` for real (on ``url``) and in the model, and keep both sets of figures."""
    from . import simulate

    real = run(point.config, url=url)
    if not real.ok:
        raise RuntimeError(f"{point.name}: the real run did not end cleanly: {real.summary()}")
    sim: SimReport = simulate(point.config, profile)
    return Comparison(point, measures(real, point.config), measures(sim, point.config))


def with_queue(point: Point, queue: str) -> Point:
    return replace(point, config=replace(point.config, queue=queue))
