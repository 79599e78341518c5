"""Plots of a run: an attempts DataFrame (wqsim.metrics) in, a matplotlib Axes out.

Every function draws on ``ax`` if given (so a notebook can lay out a grid),
else on a new figure; none calls ``plt.show()``. Times are shown in seconds
from the start of the run, latencies in milliseconds. Each also writes a
one-sentence description of what it drew, for readers who cannot see the
figure: ``alt_text(ax)`` returns it. (The notebooks follow every figure with a
markdown cell starting "*Figure", a caption in words.)
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from . import metrics
from .graph import Bounds, topological_order
from .task import Task

if TYPE_CHECKING:
    from .openloop import OpenLoop

STATUS_COLOURS = {
    "done": "tab:green",
    "retry": "tab:orange",
    "dead": "tab:red",
    "expired": "tab:purple",
    "running": "tab:blue",
    "cancelled": "tab:gray",
}


# A status that ended an attempt badly is hatched where bars are coloured by worker.
FAILED_STATUSES = ("retry", "dead", "expired")
FAILED_HATCH = "////"
# How a fault chaos injected is marked on a worker's row; 'fail' shows as a retry bar instead.
FAULT_MARKERS = {
    "crash": {"marker": "X", "color": "black", "label": "crash (chaos)"},
    "hang": {"marker": "v", "color": "tab:brown", "label": "hang (chaos)"},
    "straggle": {"marker": ">", "color": "tab:olive", "label": "straggler (chaos)"},
}
RESTART_MARKER = {"marker": "^", "color": "tab:cyan", "label": "back at work after a crash"}
EXPIRED_MARKER = {"marker": "x", "color": STATUS_COLOURS["expired"], "label": "expired (lease ran out)"}

_ALT_TEXT: weakref.WeakKeyDictionary[Axes, str] = weakref.WeakKeyDictionary()


def alt_text(ax: Axes) -> str:
    """The one-sentence description a plot function wrote of what it drew on ``ax`` ('' if none)."""
    return _ALT_TEXT.get(ax, "")


def _describe(ax: Axes, text: str) -> Axes:
    _ALT_TEXT[ax] = text
    return ax


def _marker(style: dict[str, str]) -> Line2D:
    """A legend handle that looks like the markers drawn: a marker, no line."""
    return Line2D([], [], ls="none", markersize=8, marker=style["marker"], color=style["color"], label=style["label"])


def _scatter(ax: Axes, x: object, y: object, style: dict[str, str], size: float) -> None:
    ax.scatter(x, y, s=size, zorder=4, marker=style["marker"], color=style["color"], label=style["label"])  # type: ignore[arg-type]


def _axes(ax: Axes | None, size: tuple[float, float] = (8, 4)) -> Axes:
    return ax if ax is not None else plt.subplots(figsize=size, layout="constrained")[1]


def _t0(df: pd.DataFrame) -> float:
    return float(np.nanmin([df["enqueued_at"].min(), df["started_at"].min()]))


def worker_timeline(
    df: pd.DataFrame,
    ax: Axes | None = None,
    title: str = "Worker timeline",
    faults: pd.DataFrame | None = None,
) -> Axes:
    """A Gantt chart: one row per worker, one bar per attempt, coloured by how it ended.

    Failed attempts (retry) show beside the completions as bars. Attempts lost
    with their worker (expired: the start is unknown) are crosses where the
    reaper returned the task. Given ``faults`` (``metrics.faults(queue)``), the
    faults chaos injected are marked where they struck: crashes, hangs and
    stragglers, and, after each crash, the worker's first start in its new
    process (its restart). The legend shows each mark as it is drawn.
    """
    ax = _axes(ax)
    t0 = _t0(df)
    named = list(df["worker"].dropna().unique())
    if faults is not None:
        named += list(faults["worker"].dropna().unique())
    workers = sorted({str(w) for w in named if w})
    rows = {w: i for i, w in enumerate(workers)}
    ran = df.dropna(subset=["started_at", "finished_at"])
    handles: list[Artist] = []
    for status in STATUS_COLOURS:
        group = ran[ran["status"] == status]
        if group.empty:
            continue
        ax.barh(
            group["worker"].map(rows),
            group["finished_at"] - group["started_at"],
            left=group["started_at"] - t0,
            height=0.7,
            color=STATUS_COLOURS[status],
            edgecolor="white",
            linewidth=0.3,
        )
        handles.append(Patch(color=STATUS_COLOURS[status], label=status))
    lost = df[(df["status"] == "expired") & df["worker"].isin(rows)]
    if len(lost):
        _scatter(ax, lost["finished_at"] - t0, lost["worker"].map(rows), EXPIRED_MARKER, 60)
        handles.append(_marker(EXPIRED_MARKER))
    counts: dict[str, int] = {}
    if faults is not None and len(faults):
        for kind, style in FAULT_MARKERS.items():
            hits = faults[(faults["fault"] == kind) & faults["worker"].isin(rows)]
            if hits.empty:
                continue
            _scatter(ax, hits["at"] - t0, hits["worker"].map(rows) - 0.3, style, 50)
            handles.append(_marker(style))
            counts[kind] = len(hits)
        restarts = _restarts(df, faults)
        if restarts:
            _scatter(ax, [at - t0 for _, at in restarts], [rows[w] - 0.3 for w, _ in restarts], RESTART_MARKER, 50)
            handles.append(_marker(RESTART_MARKER))
            counts["restart"] = len(restarts)
    ax.set_yticks(range(len(workers)), [f"worker {w}" for w in workers])
    ax.set_ylim(len(workers) - 0.5, -0.8)  # top to bottom, with room for the fault marks above row 0
    ax.set_xlabel("time since the first task was queued (s)")
    ax.set_title(title)
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    by_status = ran["status"].value_counts()
    parts = [f"{by_status[s]} {s}" for s in STATUS_COLOURS if s in by_status]
    if len(lost):
        parts.append(f"{len(lost)} expired (crosses)")
    parts += [f"{n} {kind}" for kind, n in counts.items()]
    return _describe(
        ax,
        f"Worker timeline: one row per worker ({len(workers)}), one bar per attempt over "
        f"{metrics.makespan(df):.2f} s; " + ", ".join(parts) + ".",
    )


def _restarts(df: pd.DataFrame, faults: pd.DataFrame) -> list[tuple[str, float]]:
    """(worker, time) of each crashed worker's first start after its crash: its replacement at work."""
    out: list[tuple[str, float]] = []
    starts = df.dropna(subset=["started_at"])
    for _, crash in faults[faults["fault"] == "crash"].iterrows():
        later = starts[(starts["worker"] == crash["worker"]) & (starts["started_at"] > crash["at"])]
        if len(later):
            out.append((str(crash["worker"]), float(later["started_at"].min())))
    return out


def dependency_gantt(
    df: pd.DataFrame,
    tasks: Sequence[Task],
    bounds: Bounds | None = None,
    ax: Axes | None = None,
    title: str = "Task graph as it ran",
) -> Axes:
    """One row per task (in dependency order), with an arrow from each prerequisite's
    finish to its dependent's start, and the measured makespan drawn beside the
    critical-path and work/workers bounds.

    Bars are coloured by the worker that ran the task (legend: workers); a task whose
    last attempt did not complete is hatched. Given ``bounds``, the tasks on its
    critical path get a thick black outline and their own legend entry.
    """
    ax = _axes(ax, (10, max(3.0, 0.22 * len(tasks) + 1)))
    final = df.drop_duplicates("task_id", keep="last").set_index("task_id")
    ran = final.dropna(subset=["started_at", "finished_at"])
    # Rows in the order tasks started (a valid dependency order); those that never ran last.
    started = ran["started_at"].to_dict()
    finished = ran["finished_at"].to_dict()
    order = sorted(topological_order(tasks), key=lambda i: (i not in started, started.get(i, 0.0)))
    rows = {task_id: i for i, task_id in enumerate(order)}
    t0 = float(ran["started_at"].min()) if len(ran) else 0.0
    critical = set(bounds.critical_path) if bounds is not None else set()
    path_edges = set(zip(bounds.critical_path, bounds.critical_path[1:], strict=False)) if bounds is not None else set()
    workers = sorted({str(w) for w in ran["worker"].dropna()})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {w: cycle[i % len(cycle)] for i, w in enumerate(workers)}
    for task_id, row in ran.iterrows():
        on_path = task_id in critical
        ax.barh(
            rows[str(task_id)],
            row["finished_at"] - row["started_at"],
            left=row["started_at"] - t0,
            height=0.6,
            color=colour.get(str(row["worker"]), "0.6"),
            hatch=FAILED_HATCH if row["status"] != "done" else None,
            edgecolor="black" if on_path else "white",
            linewidth=2.0 if on_path else 0.3,
            zorder=3 if on_path else 2,
        )
    for task in tasks:
        if task.id not in ran.index:
            continue
        for prereq in task.depends_on:
            if prereq in ran.index:
                on_path = (prereq, task.id) in path_edges
                ax.annotate(
                    "",
                    xy=(started[task.id] - t0, rows[task.id]),
                    xytext=(finished[prereq] - t0, rows[prereq]),
                    arrowprops={
                        "arrowstyle": "->",
                        "color": "black" if on_path else "0.5",
                        "lw": 1.2 if on_path else 0.6,
                        "shrinkA": 0,
                        "shrinkB": 0,
                    },
                )
    handles: list[Artist] = [Patch(color=colour[w], label=f"worker {w}") for w in workers]
    if (ran["status"] != "done").any():
        handles.append(Patch(facecolor="white", edgecolor="0.3", hatch=FAILED_HATCH, label="did not complete"))
    if critical:
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=2.0, label="on the critical path"))
    span = metrics.makespan(final.reset_index())
    handles.append(ax.axvline(span, color="black", lw=1.2, label=f"measured makespan {span:.3f} s"))
    if bounds is not None:
        handles.append(
            ax.axvline(
                bounds.critical_path_s,
                color="tab:red",
                ls="--",
                lw=1.2,
                label=f"critical path {bounds.critical_path_s:.3f} s",
            )
        )
        handles.append(
            ax.axvline(
                bounds.per_worker_s,
                color="tab:blue",
                ls=":",
                lw=1.2,
                label=f"work / {bounds.workers} workers {bounds.per_worker_s:.3f} s",
            )
        )
    ax.set_yticks(range(len(order)), order, fontsize="small" if len(order) < 40 else "xx-small")
    ax.invert_yaxis()
    ax.set_xlabel("time since the first task started (s)")
    ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    text = (
        f"Gantt chart of {len(tasks)} dependent tasks on {len(workers)} worker(s), one row each in the order they "
        f"started, bars coloured by worker, arrows from each prerequisite to its dependent; measured makespan "
        f"{span:.3f} s"
    )
    if bounds is not None:
        text += (
            f" against the critical path ({len(bounds.critical_path)} tasks outlined, {bounds.critical_path_s:.3f} s)"
            f" and work / workers ({bounds.per_worker_s:.3f} s)"
        )
    return _describe(ax, text + ".")


def throughput_over_time(df: pd.DataFrame, bin_s: float = 0.1, ax: Axes | None = None) -> Axes:
    """Completions per second over the run, in bins of ``bin_s``, with the overall mean.

    Each step is as wide as the time its bin covers: the last one ends at the last
    finish, and its rate is over that time (see ``metrics.throughput_bins``), so a run
    that does not end on a bin edge shows no false slowdown at its end.
    """
    ax = _axes(ax)
    table = metrics.throughput_bins(df, bin_s)
    overall = metrics.throughput(df)
    if len(table):
        edges = np.append(table["start"].to_numpy(), table["end"].iloc[-1])
        ax.stairs(table["tasks_per_s"].to_numpy(), edges, baseline=None, label=f"per {bin_s:g} s bin", lw=1.5)
    ax.axhline(overall, color="tab:red", ls="--", label=f"overall {overall:,.0f} tasks/s")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("time since the first start (s)")
    ax.set_ylabel("completions (tasks/s)")
    ax.set_title("Throughput over time")
    ax.legend(fontsize="small")
    low, high = (float(table["tasks_per_s"].min()), float(table["tasks_per_s"].max())) if len(table) else (0.0, 0.0)
    return _describe(
        ax,
        f"Throughput over time in {len(table)} bins of {bin_s:g} s: between {low:,.0f} and {high:,.0f} tasks/s, "
        f"{overall:,.0f} tasks/s overall (dashed line).",
    )


def _ms(value: float) -> str:
    """A latency in milliseconds to three significant figures (418 ms, 8.01 ms, 0.409 ms): more would
    be noise, as a run's percentiles move by more than that from one run to the next."""
    return f"{value:,.0f} ms" if abs(value) >= 100 else f"{value:.3g} ms"


def latency_cdf(df: pd.DataFrame, column: str = "end_to_end", ax: Axes | None = None) -> Axes:
    """The distribution of one latency (wait, service or end_to_end), with p50/p95/p99 marked."""
    ax = _axes(ax)
    name = column.replace("_", "-")
    values_ms = np.sort(metrics.latencies(df)[column].dropna().to_numpy()) * 1000
    marks = []
    if len(values_ms):
        ax.step(values_ms, np.arange(1, len(values_ms) + 1) / len(values_ms), where="post", label="measured")
        for p, style in ((50, ":"), (95, "--"), (99, "-.")):
            x = float(np.percentile(values_ms, p))
            ax.axvline(x, color="tab:red", ls=style, lw=1, label=f"p{p} {_ms(x)}")
            marks.append(f"p{p} {_ms(x)}")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xlabel(f"{name} time (ms)")
    ax.set_ylabel("fraction of tasks")
    ax.set_title(f"{name.capitalize()} latency, cumulative distribution")
    return _describe(
        ax,
        f"Cumulative distribution of the {name} latency of {len(values_ms)} tasks"
        + (f": {', '.join(marks)}." if marks else "."),
    )


def latency_histogram(df: pd.DataFrame, column: str = "wait", bins: int = 40, ax: Axes | None = None) -> Axes:
    """A histogram of one latency, with p50/p95/p99 marked; the legend sits outside, right of the axes,
    where it covers no bar."""
    ax = _axes(ax)
    name = column.replace("_", "-")
    values_ms = metrics.latencies(df)[column].dropna().to_numpy() * 1000
    ax.hist(values_ms, bins=bins, color="tab:blue", alpha=0.8, label="tasks")
    marks = []
    for p, style in ((50, ":"), (95, "--"), (99, "-.")):
        if len(values_ms):
            x = float(np.percentile(values_ms, p))
            ax.axvline(x, color="tab:red", ls=style, lw=1, label=f"p{p} {_ms(x)}")
            marks.append(f"p{p} {_ms(x)}")
    ax.set_xlabel(f"{name} time (ms)")
    ax.set_ylabel("tasks")
    ax.set_title(f"{name.capitalize()} latency")
    if len(values_ms):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    return _describe(
        ax,
        f"Histogram of the {name} latency of {len(values_ms)} tasks in {bins} bins"
        + (f": {', '.join(marks)}." if marks else "."),
    )


def queue_length(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Tasks ready but not yet started, over time."""
    ax = _axes(ax)
    series = metrics.queue_length(df)
    ax.step(series.index, series.to_numpy(), where="post")
    ax.set_xlabel("time since the first task was queued (s)")
    ax.set_ylabel("tasks waiting")
    ax.set_title("Queue length over time")
    peak = int(series.max()) if len(series) else 0
    return _describe(
        ax, f"Queue length over time: tasks ready but not started, at most {peak}, over {_span(series):.2f} s."
    )


def _span(series: pd.Series) -> float:
    return float(series.index.max() - series.index.min()) if len(series) else 0.0


def _plain_number(value: float, _pos: object = None) -> str:
    """A log axis's tick as the number it is: 1, 10, 100 (not 1.0, 10.0 or 10^2), 0.5 if fractional."""
    return f"{value:,.0f}" if value >= 1 and float(value).is_integer() else f"{value:g}"


def sweep(
    results: pd.DataFrame,
    x: str,
    y: str = "tasks_per_s",
    by: str | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    logx: bool = True,
    ideal: str | None = None,
    ideal_label: str = "ideal",
) -> Axes:
    """A parameter sweep: ``y`` against ``x`` (e.g. throughput vs batch size), one line per ``by``.

    ``ideal`` names a column of ``results`` to draw as a dashed line beside the
    measurements (e.g. workers / service time). The y axis starts at 0 and is set
    after every line is drawn, so none is cut off; the x ticks are the values swept.
    """
    ax = _axes(ax)
    groups = results.groupby(by) if by else [(None, results)]
    for key, group in groups:
        group = group.sort_values(x)
        ax.plot(group[x], group[y], marker="o", label=f"{by} = {key!s}" if by else "measured")
    if ideal is not None:
        line = results.sort_values(x)
        ax.plot(line[x], line[ideal], ls="--", color="gray", label=ideal_label)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_number))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(sorted(results[x].unique()))
    ax.set_ylim(bottom=0)  # last: the top then covers every line drawn above
    xname = x.replace("_", " ")
    ax.set_xlabel(xname)
    ax.set_ylabel("throughput (tasks/s)" if y == "tasks_per_s" else y.replace("_", " "))
    ax.set_title(title or f"{ax.get_ylabel().capitalize()} vs {xname}")
    ax.legend(fontsize="small")
    ax.grid(True, alpha=0.3)
    best = results.iloc[int(np.argmax(results[y].to_numpy()))] if len(results) else None
    text = f"{ax.get_ylabel().capitalize()} against {xname} ({len(results)} runs" + (
        f", one line per {by}" if by else ""
    )
    if best is not None:
        text += f"; highest {best[y]:,.0f} at {xname} {_plain_number(float(best[x]))}"
    if ideal is not None:
        text += f"; dashed: {ideal_label}"
    return _describe(ax, text + ").")


def wait_vs_theory(
    df: pd.DataFrame, arrival_rate: float, service_time_s: float, servers: int, ax: Axes | None = None
) -> Axes:
    """Measured queue waits beside the M/M/c (Erlang C) prediction, with the measured,
    M/M/c and M/D/c mean waits marked as vertical lines."""
    ax = _axes(ax)
    waits_ms = np.sort(metrics.latencies(df)["wait"].dropna().to_numpy()) * 1000
    if len(waits_ms):
        ax.step(waits_ms, np.arange(1, len(waits_ms) + 1) / len(waits_ms), where="post", label="measured waits")
    top = max(float(waits_ms.max()) if len(waits_ms) else 0.0, 5 * service_time_s * 1000)
    t_ms = np.linspace(0, top, 200)
    ax.plot(
        t_ms,
        metrics.mmc_wait_cdf(t_ms / 1000, arrival_rate, service_time_s, servers),
        "--",
        color="tab:orange",
        label=f"M/M/{servers} (Erlang C) distribution",
    )
    mm = metrics.mmc_mean_wait(arrival_rate, service_time_s, servers) * 1000
    md = metrics.mdc_mean_wait(arrival_rate, service_time_s, servers) * 1000
    ax.axvline(mm, color="tab:orange", ls="--", lw=1, label=f"M/M/{servers} mean wait {mm:.1f} ms (random service)")
    ax.axvline(md, color="tab:green", ls=":", lw=1.5, label=f"M/D/{servers} mean wait {md:.1f} ms (fixed service)")
    text = (
        f"Cumulative distribution of queue waits, measured against the M/M/{servers} prediction; "
        f"mean waits marked: M/M/{servers} {mm:.1f} ms, M/D/{servers} {md:.1f} ms"
    )
    if len(waits_ms):
        mean = float(waits_ms.mean())
        ax.axvline(mean, color="tab:blue", ls="-.", lw=1, label=f"measured mean wait {mean:.1f} ms")
        text += f", measured {mean:.1f} ms"
    ax.set_xlabel("queue wait (ms)")
    ax.set_ylabel("P(wait <= t)")
    service_ms = service_time_s * 1000
    ax.set_title(f"Queue wait: measured vs theory ({arrival_rate:.3g} tasks/s, {service_ms:.3g} ms, {servers} workers)")
    ax.legend(loc="lower right", fontsize="small")
    return _describe(ax, text + ".")


def outcome_bars(table: pd.DataFrame, ax: Axes | None = None, title: str = "What the killer cost") -> Axes:
    """Side-by-side bars of bad outcomes per queue: ``table`` has one row per queue (its index
    names it) and one column per outcome counted (e.g. 'lost', 'completed twice').

    Each bar carries its count, so a zero still shows as a labelled 0.
    """
    ax = _axes(ax, (7, 3.5))
    outcomes = [str(c) for c in table.columns]
    width = 0.8 / max(len(outcomes), 1)
    x = np.arange(len(table))
    colours = ["tab:red", "tab:purple", "tab:orange", "tab:gray"]
    for i, outcome in enumerate(outcomes):
        values = table[outcome].to_numpy(dtype=float)
        bars = ax.bar(x + (i - (len(outcomes) - 1) / 2) * width, values, width, label=outcome, color=colours[i % 4])
        ax.bar_label(bars, fmt="%g")
    ax.set_xticks(x, [str(name) for name in table.index])
    ax.set_ylabel("tasks")
    ax.set_ylim(0, max(1.0, float(table.to_numpy(dtype=float).max())) * 1.2)
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
    counts = "; ".join(f"{name}: " + ", ".join(f"{row[o]:g} {o}" for o in outcomes) for name, row in table.iterrows())
    return _describe(ax, f"Bar chart of tasks {' or '.join(outcomes)}, for {len(table)} queues ({counts}).")


def predicted_waits(result: OpenLoop, ax: Axes | None = None) -> Axes:
    """The measured mean queue wait of an open-loop run (``wqsim.open_loop``) beside M/D/c and
    M/M/c, each computed for the nominal and for the effective (fitted) service time.

    Bars side by side, one pair per model, so the step from nominal to effective
    shows how much a small extra service time adds to the wait near saturation.
    """
    ax = _axes(ax, (6, 4))
    c = result.workers
    views = [("nominal", result.nominal, "tab:gray"), ("effective", result.effective, "tab:green")]
    models = [(f"M/D/{c}", "mdc_wait_s"), (f"M/M/{c}", "mmc_wait_s")]
    width = 0.35
    for i, (name, view, colour) in enumerate(views):
        heights = [getattr(view, attr) * 1000 for _, attr in models]
        shown = [h if np.isfinite(h) else 0.0 for h in heights]
        bars = ax.bar(
            np.arange(len(models)) + (i - 0.5) * width,
            shown,
            width,
            color=colour,
            label=f"{name}: {view.service_s * 1000:.1f} ms, utilisation {view.utilisation:.2f}",
        )
        ax.bar_label(bars, labels=[f"{h:.1f}" if np.isfinite(h) else "unstable" for h in heights], fontsize="small")
    measured = result.mean_wait_s * 1000
    ax.axhline(measured, color="tab:blue", ls="-.", lw=1.5, label=f"measured mean wait {measured:.1f} ms")
    ax.set_xticks(range(len(models)), [m for m, _ in models])
    ax.set_ylabel("mean queue wait (ms)")
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)
    ax.set_title("Mean wait: measured vs predicted, by service time")
    ax.legend(loc="upper left", fontsize="small")
    n, e = result.nominal, result.effective
    return _describe(
        ax,
        f"Bar chart of mean queue waits on {c} workers: M/D/{c} predicts {n.mdc_wait_s * 1000:.1f} ms for the "
        f"nominal {n.service_s * 1000:.1f} ms service time and {e.mdc_wait_s * 1000:.1f} ms for the effective "
        f"{e.service_s * 1000:.1f} ms; M/M/{c} {n.mmc_wait_s * 1000:.1f} and {e.mmc_wait_s * 1000:.1f} ms; "
        f"measured {measured:.1f} ms (dash-dot line).",
    )
