"""Parameter sweeps: one run per value of one setting, one DataFrame row per run.

The rows are what ``wqsim.plots.sweep`` draws (``tasks_per_s`` against the
setting, by default), and each keeps the numbers a reader asks of a run next:
both throughputs, the makespan, waits and utilisation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import pandas as pd

from . import metrics
from .config import RunConfig
from .runner import RunReport, run

log = logging.getLogger("wqsim.sweeps")

COLUMNS = [
    "tasks_per_s",
    "makespan_tasks_per_s",
    "makespan_s",
    "wall_s",
    "wait_mean_s",
    "wait_p50_s",
    "wait_p95_s",
    "wait_p99_s",
    "utilisation",
    "heartbeats",
    "done",
    "ok",
]


def vary(base: RunConfig, param: str, value: object) -> RunConfig:
    """``base`` with one setting replaced: a RunConfig field ("workers") or, dotted, one of its
    worker's or chaos's ("worker.batch_size"). The new config is validated like any other."""
    head, _, rest = param.partition(".")
    names = {f.name for f in dataclasses.fields(base)}
    if head not in names:
        raise ValueError(f"param must name a RunConfig field, or worker.<field> or chaos.<field> (got {param!r})")
    changes: dict[str, Any] = {head: value}
    if rest:
        inner = getattr(base, head)
        if head not in ("worker", "chaos") or rest not in {f.name for f in dataclasses.fields(inner)}:
            raise ValueError(f"param must name a RunConfig field, or worker.<field> or chaos.<field> (got {param!r})")
        changes = {head: dataclasses.replace(inner, **{rest: value})}
    return dataclasses.replace(base, **changes)


def row(report: RunReport) -> dict[str, object]:
    """One run's numbers, as a sweep row (see COLUMNS), from its report."""
    df = report.attempts()
    waits = metrics.latencies(df)["wait"].dropna()
    busy = metrics.utilisation(df)
    return {
        "tasks_per_s": report.tasks_per_s,
        "makespan_tasks_per_s": report.makespan_tasks_per_s,
        "makespan_s": report.makespan_s,
        "wall_s": report.wall_s,
        "wait_mean_s": float(waits.mean()) if len(waits) else float("nan"),
        "wait_p50_s": float(waits.quantile(0.5)) if len(waits) else float("nan"),
        "wait_p95_s": float(waits.quantile(0.95)) if len(waits) else float("nan"),
        "wait_p99_s": float(waits.quantile(0.99)) if len(waits) else float("nan"),
        "utilisation": float(busy.mean()) if len(busy) else 0.0,
        "heartbeats": report.heartbeats,
        "done": report.audit.done,
        "ok": report.ok,
    }


def sweep(base: RunConfig, param: str, values: Sequence[object], url: str | None = None) -> pd.DataFrame:
    """Run ``base`` once per value of ``param`` (see ``vary``), in order, on its queue (each run purges it).

    Returns one row per run: a column named after the setting (its last part:
    "batch_size" for "worker.batch_size") holding the value, then COLUMNS.
    Throughput comes twice, as RunReport defines it: ``tasks_per_s`` over the
    wall time, ``makespan_tasks_per_s`` over the makespan. Every config is built
    before the first run, so a bad value fails before any work is done.
    """
    if not values:
        raise ValueError("values must name at least one value to run")
    configs = [vary(base, param, value) for value in values]
    column = param.rsplit(".", 1)[-1]
    rows = []
    for value, config in zip(values, configs, strict=True):
        report = run(config, url=url)
        log.info("%s = %s: %s", param, value, report.summary())
        rows.append({column: value, **row(report)})
    return pd.DataFrame(rows, columns=[column, *COLUMNS])
