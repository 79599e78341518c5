"""Plots of a run: an attempts DataFrame (wqsim.metrics) in, a matplotlib Axes out.

Every function draws on ``ax`` if given (so a notebook can lay out a grid),
else on a new figure; none calls ``plt.show()``. Times are shown in seconds
from the start of the run, latencies in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.patches import Patch
from matplotlib.ticker import ScalarFormatter

from . import metrics
from .graph import Bounds, topological_order
from .task import Task

STATUS_COLOURS = {
    "done": "tab:green",
    "retry": "tab:orange",
    "dead": "tab:red",
    "expired": "tab:purple",
    "running": "tab:blue",
    "cancelled": "tab:gray",
}


def _axes(ax: Axes | None, size: tuple[float, float] = (8, 4)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def _t0(df: pd.DataFrame) -> float:
    return float(np.nanmin([df["enqueued_at"].min(), df["started_at"].min()]))


def _legend(ax: Axes, statuses: Sequence[str]) -> None:
    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in STATUS_COLOURS if s in set(statuses)]
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small")


def worker_timeline(df: pd.DataFrame, ax: Axes | None = None, title: str = "Worker timeline") -> Axes:
    """A Gantt chart: one row per worker, one bar per attempt, coloured by how it ended.

    Failed attempts (retry) and attempts lost with their worker (expired: the
    start is unknown, so a cross marks when the reaper returned the task) show
    beside the completions.
    """
    ax = _axes(ax)
    t0 = _t0(df)
    workers = sorted(w for w in df["worker"].dropna().unique() if w)
    rows = {w: i for i, w in enumerate(workers)}
    ran = df.dropna(subset=["started_at", "finished_at"])
    for status, group in ran.groupby("status"):
        y = group["worker"].map(rows)
        ax.barh(
            y,
            group["finished_at"] - group["started_at"],
            left=group["started_at"] - t0,
            height=0.7,
            color=STATUS_COLOURS.get(str(status), "tab:blue"),
            edgecolor="white",
            linewidth=0.3,
        )
    lost = df[(df["status"] == "expired") & df["worker"].isin(rows)]
    if len(lost):
        ax.scatter(
            lost["finished_at"] - t0,
            lost["worker"].map(rows),
            marker="x",
            s=60,
            color=STATUS_COLOURS["expired"],
            zorder=3,
        )
    ax.set_yticks(range(len(workers)), [f"worker {w}" for w in workers])
    ax.invert_yaxis()
    ax.set_xlabel("time since the first task was queued (s)")
    ax.set_title(title)
    _legend(ax, list(df["status"]))
    return ax


def dependency_gantt(
    df: pd.DataFrame,
    tasks: Sequence[Task],
    bounds: Bounds | None = None,
    ax: Axes | None = None,
    title: str = "Task graph as it ran",
) -> Axes:
    """One row per task (in dependency order), with an arrow from each prerequisite's
    finish to its dependent's start, and the measured makespan drawn beside the
    critical-path and work/workers bounds."""
    ax = _axes(ax, (10, max(3.0, 0.22 * len(tasks) + 1)))
    final = df.drop_duplicates("task_id", keep="last").set_index("task_id")
    ran = final.dropna(subset=["started_at", "finished_at"])
    # Rows in the order tasks started (a valid dependency order); those that never ran last.
    started = ran["started_at"].to_dict()
    finished = ran["finished_at"].to_dict()
    order = sorted(topological_order(tasks), key=lambda i: (i not in started, started.get(i, 0.0)))
    rows = {task_id: i for i, task_id in enumerate(order)}
    t0 = float(ran["started_at"].min()) if len(ran) else 0.0
    for status, group in ran.groupby("status"):
        ax.barh(
            group.index.map(rows),
            group["finished_at"] - group["started_at"],
            left=group["started_at"] - t0,
            height=0.6,
            color=STATUS_COLOURS.get(str(status), "tab:blue"),
        )
    for task in tasks:
        if task.id not in ran.index:
            continue
        for prereq in task.depends_on:
            if prereq in ran.index:
                ax.annotate(
                    "",
                    xy=(started[task.id] - t0, rows[task.id]),
                    xytext=(finished[prereq] - t0, rows[prereq]),
                    arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.6, "shrinkA": 0, "shrinkB": 0},
                )
    span = metrics.makespan(final.reset_index())
    ax.axvline(span, color="black", lw=1.2, label=f"measured makespan {span:.3f} s")
    if bounds is not None:
        ax.axvline(
            bounds.critical_path_s,
            color="tab:red",
            ls="--",
            lw=1.2,
            label=f"critical path {bounds.critical_path_s:.3f} s",
        )
        ax.axvline(
            bounds.per_worker_s,
            color="tab:blue",
            ls=":",
            lw=1.2,
            label=f"work / {bounds.workers} workers {bounds.per_worker_s:.3f} s",
        )
    ax.set_yticks(range(len(order)), order, fontsize="small" if len(order) < 40 else "xx-small")
    ax.invert_yaxis()
    ax.set_xlabel("time since the first task started (s)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return ax


def throughput_over_time(df: pd.DataFrame, bin_s: float = 0.1, ax: Axes | None = None) -> Axes:
    """Completions per second over the run, in bins of ``bin_s``, with the overall mean."""
    ax = _axes(ax)
    series = metrics.throughput_over_time(df, bin_s)
    ax.step(series.index, series.to_numpy(), where="post", label=f"per {bin_s:g} s bin")
    ax.axhline(metrics.throughput(df), color="tab:red", ls="--", label=f"overall {metrics.throughput(df):,.0f} tasks/s")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time since the first start (s)")
    ax.set_ylabel("completions (tasks/s)")
    ax.set_title("Throughput over time")
    ax.legend(fontsize="small")
    return ax


def latency_cdf(df: pd.DataFrame, column: str = "end_to_end", ax: Axes | None = None) -> Axes:
    """The distribution of one latency (wait, service or end_to_end), with p50/p95/p99 marked."""
    ax = _axes(ax)
    values_ms = np.sort(metrics.latencies(df)[column].dropna().to_numpy()) * 1000
    if len(values_ms):
        ax.step(values_ms, np.arange(1, len(values_ms) + 1) / len(values_ms), where="post")
        for p, style in ((50, ":"), (95, "--"), (99, "-.")):
            x = float(np.percentile(values_ms, p))
            ax.axvline(x, color="tab:red", ls=style, lw=1, label=f"p{p} {x:.2f} ms")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel(f"{column.replace('_', '-')} time (ms)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"{column.replace('_', '-').capitalize()} latency, cumulative distribution")
    return ax


def latency_histogram(df: pd.DataFrame, column: str = "wait", bins: int = 40, ax: Axes | None = None) -> Axes:
    """A histogram of one latency, with p50/p95/p99 marked."""
    ax = _axes(ax)
    values_ms = metrics.latencies(df)[column].dropna().to_numpy() * 1000
    ax.hist(values_ms, bins=bins, color="tab:blue", alpha=0.8)
    for p, style in ((50, ":"), (95, "--"), (99, "-.")):
        if len(values_ms):
            x = float(np.percentile(values_ms, p))
            ax.axvline(x, color="tab:red", ls=style, lw=1, label=f"p{p} {x:.2f} ms")
    ax.set_xlabel(f"{column.replace('_', '-')} time (ms)")
    ax.set_ylabel("tasks")
    ax.set_title(f"{column.replace('_', '-').capitalize()} latency")
    if len(values_ms):
        ax.legend(fontsize="small")
    return ax


def queue_length(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Tasks ready but not yet started, over time."""
    ax = _axes(ax)
    series = metrics.queue_length(df)
    ax.step(series.index, series.to_numpy(), where="post")
    ax.set_xlabel("time since the first task was queued (s)")
    ax.set_ylabel("tasks waiting")
    ax.set_title("Queue length over time")
    return ax


def sweep(
    results: pd.DataFrame,
    x: str,
    y: str = "tasks_per_s",
    by: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    logx: bool = True,
) -> Axes:
    """A parameter sweep: ``y`` against ``x`` (e.g. throughput vs batch size), one line per ``by``."""
    ax = _axes(ax)
    groups = results.groupby(by) if by else [(None, results)]
    for key, group in groups:
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=f"{by} = {key!s}" if by else None)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 1, 10, 100 rather than 10^0, 10^1, 10^2
    ax.set_ylim(bottom=0)
    ax.set_xlabel(x.replace("_", " "))
    ax.set_ylabel("throughput (tasks/s)" if y == "tasks_per_s" else y.replace("_", " "))
    ax.set_title(title or f"{ax.get_ylabel().capitalize()} vs {x.replace('_', ' ')}")
    if by:
        ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    return ax


def wait_vs_theory(
    df: pd.DataFrame, arrival_rate: float, service_time_s: float, servers: int, ax: Axes | None = None
) -> Axes:
    """Measured queue waits beside the M/M/c (Erlang C) prediction and the M/D/c mean."""
    ax = _axes(ax)
    waits_ms = np.sort(metrics.latencies(df)["wait"].dropna().to_numpy()) * 1000
    if len(waits_ms):
        ax.step(waits_ms, np.arange(1, len(waits_ms) + 1) / len(waits_ms), where="post", label="measured")
    top = max(float(waits_ms.max()) if len(waits_ms) else 0.0, 5 * service_time_s * 1000)
    t_ms = np.linspace(0, top, 200)
    ax.plot(
        t_ms,
        metrics.mmc_wait_cdf(t_ms / 1000, arrival_rate, service_time_s, servers),
        "--",
        label=f"M/M/{servers} (Erlang C)",
    )
    md = metrics.mdc_mean_wait(arrival_rate, service_time_s, servers) * 1000
    ax.axvline(md, color="tab:green", ls=":", label=f"M/D/{servers} mean wait {md:.1f} ms")
    if len(waits_ms):
        ax.axvline(
            float(waits_ms.mean()), color="tab:blue", ls="-.", lw=1, label=f"measured mean {waits_ms.mean():.1f} ms"
        )
    ax.set_xlabel("queue wait (ms)")
    ax.set_ylabel("P(wait <= t)")
    ax.set_title(
        f"Queue wait: measured vs theory ({arrival_rate:g} tasks/s, {service_time_s * 1000:g} ms, {servers} workers)"
    )
    ax.legend(loc="lower right", fontsize="small")
    return ax
