"""Open-loop experiments: Poisson arrivals into a pool, measured waits beside queueing theory.

``open_loop(config)`` runs a config with an arrival rate and fits what the
models need from the run's own records: the arrival rate the tasks actually
came at, and the effective service time (handler time plus the hand-off
between tasks, ``metrics.effective_service_time``). It then sets the measured
mean wait beside the M/M/c (Erlang C) and M/D/c predictions, for the nominal
service time and for the effective one. ``workbench(...)`` is the same with
plain numbers for arguments, printed and drawn: what notebook 06's sliders call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from . import metrics
from .config import RunConfig, WorkerConfig, check_int_at_least, check_positive
from .runner import RunReport, run


@dataclass(frozen=True)
class Prediction:
    """One queueing model's view of the run: a service time, the utilisation it implies, mean waits."""

    service_s: float
    utilisation: float  # arrival rate * service time / workers; 1 or more: the queue grows without bound
    mmc_wait_s: float  # M/M/c (Erlang C): exponential service times
    mdc_wait_s: float  # M/D/c: fixed service times, as sleep tasks have


@dataclass(frozen=True, repr=False)
class OpenLoop:
    """An open-loop run and what it is compared with (see ``open_loop``); shown as its summary."""

    report: RunReport
    arrival_rate: float  # the rate asked for, tasks/s
    measured_rate: float  # the rate the tasks arrived at: (n - 1) / (last enqueue - first enqueue)
    workers: int
    nominal: Prediction  # the handler's nominal duration (config.duration_ms)
    effective: Prediction  # the fitted service time: mean handler time + median hand-off
    handoff_s: float  # the median hand-off between two tasks on one worker (metrics.handoff_gaps)
    mean_wait_s: float  # measured: enqueue to start, over the completed tasks
    p95_wait_s: float

    @property
    def attempts(self) -> pd.DataFrame:
        return self.report.attempts()

    def table(self) -> pd.DataFrame:
        """The measured mean wait beside both predictions, in milliseconds: one row per view."""
        views = (("nominal", self.nominal), ("effective", self.effective))
        rows = [(name, v.service_s, v.utilisation, v.mmc_wait_s, v.mdc_wait_s) for name, v in views]
        df = pd.DataFrame(rows, columns=["service time", "service_ms", "utilisation", "M/M/c_ms", "M/D/c_ms"])
        for col in ("service_ms", "M/M/c_ms", "M/D/c_ms"):
            df[col] = df[col] * 1000
        df["measured_ms"] = self.mean_wait_s * 1000
        return df.set_index("service time")

    def __repr__(self) -> str:
        return f"OpenLoop({self.report.audit.done} tasks, {self.measured_rate:.0f}/s, {self.workers} workers)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython (and interact) show the summary
        printer.text(self.summary())

    def summary(self) -> str:
        """Three lines: the arrivals, the fitted service time, and the waits measured and predicted."""
        n, e = self.nominal, self.effective
        grow = (e.service_s / n.service_s - 1) * 100 if n.service_s > 0 else math.nan
        return (
            f"{self.report.audit.done} tasks arrived at {self.measured_rate:.0f}/s (asked: {self.arrival_rate:g}/s) "
            f"on {self.workers} worker(s)\n"
            f"service time: nominal {n.service_s * 1000:.1f} ms, effective {e.service_s * 1000:.1f} ms "
            f"(hand-off {self.handoff_s * 1000:.2f} ms, {grow:+.0f} %); utilisation {n.utilisation:.2f} -> "
            f"{e.utilisation:.2f}\n"
            f"mean wait: measured {self.mean_wait_s * 1000:.1f} ms; M/D/{self.workers} predicts "
            f"{n.mdc_wait_s * 1000:.1f} ms (nominal), {e.mdc_wait_s * 1000:.1f} ms (effective)"
        )


def predict(arrival_rate: float, service_s: float, workers: int) -> Prediction:
    """Utilisation and M/M/c, M/D/c mean waits for one service time (inf once utilisation reaches 1)."""
    return Prediction(
        service_s,
        arrival_rate * service_s / workers,
        metrics.mmc_mean_wait(arrival_rate, service_s, workers),
        metrics.mdc_mean_wait(arrival_rate, service_s, workers),
    )


def measured_rate(df: pd.DataFrame) -> float:
    """The rate tasks became ready at, per second: (n - 1) over the time from the first to the last."""
    first = df.groupby("task_id")["enqueued_at"].min().dropna().sort_values()
    span = float(first.iloc[-1] - first.iloc[0]) if len(first) > 1 else 0.0
    return (len(first) - 1) / span if span > 0 else math.nan


def open_loop(config: RunConfig, url: str | None = None, progress: bool = False) -> OpenLoop:
    """Run ``config`` (it needs an arrival rate) and set its waits beside M/M/c and M/D/c.

    Both predictions use the measured arrival rate: a few hundred Poisson
    arrivals come a few percent off the rate asked for, and near saturation a
    few percent is much of the wait. The nominal service time is
    ``config.duration_ms``; the effective one is fitted from the run.
    ``progress`` shows wqsim.run's progress bar.
    """
    if config.arrival_rate is None:
        raise ValueError("open_loop needs a config with an arrival_rate (tasks per second)")
    report = run(config, url=url, progress=progress)
    df = report.attempts()
    rate = measured_rate(df)
    if not rate > 0:
        rate = config.arrival_rate
    gaps = metrics.handoff_gaps(df)
    waits = metrics.latencies(df)["wait"].dropna()
    return OpenLoop(
        report=report,
        arrival_rate=config.arrival_rate,
        measured_rate=rate,
        workers=config.workers,
        nominal=predict(rate, max(config.duration_ms / 1000, 1e-6), config.workers),
        effective=predict(rate, metrics.effective_service_time(df), config.workers),
        handoff_s=float(gaps.median()) if len(gaps) else 0.0,
        mean_wait_s=float(waits.mean()),
        p95_wait_s=float(waits.quantile(0.95)),
    )


def workbench(
    queue: str,
    arrival_rate: float = 150.0,
    workers: int = 2,
    service_ms: float = 10.0,
    batch_size: int = 1,
    tasks: int = 300,
    seed: int = 0,
    url: str | None = None,
    progress: bool = True,
) -> OpenLoop:
    """One open-loop experiment from plain numbers (what ipywidgets sliders give): run it on
    ``queue`` (purged first) with a progress bar, and draw its waits beside the theory (the
    M/M/c distribution and both models' means for the fitted service time, and
    ``plots.predicted_waits``). The result shows as its summary."""
    import matplotlib.pyplot as plt

    from . import plots

    check_positive("arrival_rate", arrival_rate)
    check_int_at_least("workers", workers, 1)
    config = RunConfig(
        queue=queue,
        tasks=tasks,
        workers=workers,
        duration_ms=service_ms,
        arrival_rate=arrival_rate,
        arrival_seed=seed,
        worker=dataclasses.replace(WorkerConfig(), batch_size=batch_size),
    )
    result = open_loop(config, url=url, progress=progress)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    plots.wait_vs_theory(result.attempts, result.measured_rate, result.effective.service_s, workers, ax=left)
    plots.predicted_waits(result, ax=right)
    plt.show()
    return result
