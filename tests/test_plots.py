"""wqsim.plots checked by what it draws: lines' x spans, legend entries, bar colours and
hatches, tick labels and the alt text, on synthetic runs whose answers are known."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from wqsim import Queue, bounds, diamond, metrics, plots  # noqa: E402
from wqsim.graph import Bounds  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def row(task_id, worker, start, finish, status="done", enqueued=0.0, attempt=1):
    return {
        "task_id": task_id,
        "kind": "sleep",
        "package": "",
        "attempt": attempt,
        "worker": worker,
        "enqueued_at": enqueued,
        "started_at": start,
        "finished_at": finish,
        "status": status,
        "error": "",
    }


def legend_labels(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def legend_handle(ax, label):
    legend = ax.get_legend()
    return next(h for h, t in zip(legend.legend_handles, legend.get_texts(), strict=True) if t.get_text() == label)


def tick_labels(axis):
    axis.axes.figure.canvas.draw()
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


# -- sweep ------------------------------------------------------------------------------

WORKERS = pd.DataFrame({"workers": [1, 2, 3, 4], "tasks_per_s": [95.0, 180.0, 240.0, 260.0]})
WORKERS["ideal"] = WORKERS.workers / 0.010


def test_sweep_draws_the_ideal_line_over_the_whole_x_range_and_inside_the_y_limits():
    ax = plots.sweep(WORKERS, "workers", logx=False, ideal="ideal", ideal_label="ideal: workers / 10 ms")
    ideal = next(line for line in ax.get_lines() if line.get_label() == "ideal: workers / 10 ms")
    assert (min(ideal.get_xdata()), max(ideal.get_xdata())) == (1, 4)
    bottom, top = ax.get_ylim()
    assert bottom == 0 and top >= 400, "the y range covers the ideal line's top: none of it is clipped"
    assert ideal.get_linestyle() == "--"


def test_sweep_gives_the_measured_line_a_legend_entry():
    ax = plots.sweep(WORKERS, "workers", logx=False, ideal="ideal", ideal_label="ideal: workers / 10 ms")
    assert legend_labels(ax) == ["measured", "ideal: workers / 10 ms"]
    assert tick_labels(ax.xaxis) == ["1", "2", "3", "4"]


def test_sweep_on_a_log_axis_labels_ticks_as_integers():
    batches = pd.DataFrame({"batch_size": [1, 10, 100], "tasks_per_s": [1e4, 5e4, 1e5]})
    ax = plots.sweep(batches, "batch_size")
    assert ax.get_xscale() == "log"
    assert tick_labels(ax.xaxis) == ["1", "10", "100"]
    assert ax.get_ylim()[0] == 0


# -- throughput over time ---------------------------------------------------------------


def steady(n=100, service_s=0.007):
    """Two workers completing back to back: a steady 2 / service_s tasks per second."""
    return metrics.frame(
        [row(str(i), str(i % 2 + 1), (i // 2) * service_s, (i // 2 + 1) * service_s) for i in range(n)]
    )


def test_throughput_bins_scale_the_partial_last_bin_to_the_time_it_covers():
    df = steady(n=110, service_s=0.007)  # ends at 0.385 s: the last 0.1 s bin covers only 0.085 s
    table = metrics.throughput_bins(df, bin_s=0.1)
    assert table["end"].iloc[-1] == pytest.approx(0.385)
    assert (table["end"] - table["start"]).iloc[-1] == pytest.approx(0.085)
    assert table["completions"].sum() == 110
    rates = table["tasks_per_s"].to_numpy()
    assert rates.min() > 0.9 * (2 / 0.007), "no bin, the last included, shows a slowdown that did not happen"


def test_throughput_bins_merge_a_last_sliver_into_the_bin_before():
    df = steady(n=60, service_s=0.007)  # ends at 0.21 s: a 0.01 s sliver after the 0.2 s edge
    table = metrics.throughput_bins(df, bin_s=0.1)
    assert list(table["start"]) == pytest.approx([0.0, 0.1])
    assert table["end"].iloc[-1] == pytest.approx(0.21)
    assert list(table["completions"]) == [28, 32]  # 14 finishes per worker before 0.1 s, 16 in the 0.11 s after
    assert table["tasks_per_s"].to_numpy() == pytest.approx([280, 32 / 0.11])
    assert table["completions"].sum() == 60


def test_throughput_over_time_plot_draws_each_bin_as_wide_as_it_is_and_no_dip_at_the_end():
    df = steady(n=110, service_s=0.007)
    ax = plots.throughput_over_time(df, bin_s=0.1)
    (stairs,) = [p for p in ax.patches if type(p).__name__ == "StepPatch"]
    values, edges = stairs.get_data().values, stairs.get_data().edges
    assert edges[-1] == pytest.approx(0.385), "the last step ends at the last finish, not a whole bin later"
    assert values.min() > 0.9 * values.max()
    assert "per 0.1 s bin" in legend_labels(ax)[0]


# -- dependency gantt ---------------------------------------------------------------------


def diamond_run(failed: str | None = None):
    tasks = diamond(prefix="s")  # s-a -> (s-b, s-c) -> s-d
    schedule = {"s-a": ("1", 0.0, 1.0), "s-b": ("1", 1.0, 2.0), "s-c": ("2", 1.0, 1.5), "s-d": ("1", 2.0, 3.0)}
    rows = [row(t, w, a, b, "dead" if t == failed else "done") for t, (w, a, b) in schedule.items()]
    return tasks, metrics.frame(rows)


def bars(ax):
    """task id -> its bar, by the row it is drawn on."""
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    return {ticks[round(p.get_y() + p.get_height() / 2)]: p for p in ax.patches if isinstance(p, Rectangle)}


def test_dependency_gantt_colours_bars_by_worker_with_a_legend_entry_per_worker():
    tasks, df = diamond_run()
    ax = plots.dependency_gantt(df, tasks, bounds(tasks, 2))
    drawn = bars(ax)
    assert drawn["s-a"].get_facecolor() == drawn["s-b"].get_facecolor() == drawn["s-d"].get_facecolor()
    assert drawn["s-c"].get_facecolor() != drawn["s-a"].get_facecolor()
    labels = legend_labels(ax)
    assert {"worker 1", "worker 2"} <= set(labels)
    assert legend_handle(ax, "worker 2").get_facecolor() == drawn["s-c"].get_facecolor()


def test_dependency_gantt_outlines_the_critical_path_and_names_it_in_the_legend():
    tasks, df = diamond_run()
    b = Bounds(critical_path_s=3.0, critical_path=("s-a", "s-b", "s-d"), work_s=3.5, workers=2)
    ax = plots.dependency_gantt(df, tasks, b)
    drawn = bars(ax)
    for task_id in ("s-a", "s-b", "s-d"):
        assert drawn[task_id].get_linewidth() >= 2 and drawn[task_id].get_edgecolor() == to_rgba("black")
    assert drawn["s-c"].get_linewidth() < 1
    assert "on the critical path" in legend_labels(ax)
    assert "3 tasks outlined" in plots.alt_text(ax)


def test_dependency_gantt_hatches_a_task_that_did_not_complete():
    tasks, df = diamond_run(failed="s-c")
    ax = plots.dependency_gantt(df, tasks, bounds(tasks, 2))
    drawn = bars(ax)
    assert drawn["s-c"].get_hatch() and not drawn["s-a"].get_hatch()
    assert legend_handle(ax, "did not complete").get_hatch() == drawn["s-c"].get_hatch()


# -- worker timeline ----------------------------------------------------------------------


def chaos_run():
    rows = [
        row("1", "1", 0.0, 0.1),
        row("2", "1", 0.1, 0.2, status="retry"),
        row("2", "2", 0.3, 0.4, attempt=2),
        row("3", "1", None, 1.0, status="expired"),  # the worker crashed on it; the reaper returned it at 1.0
        row("3", "1", 1.2, 1.3, attempt=2),  # the replacement process, under the same id
        row("4", "2", 0.5, 2.0),
    ]
    faults = pd.DataFrame(
        [
            {"task_id": "3", "attempt": 1, "worker": "1", "at": 0.2, "fault": "crash"},
            {"task_id": "4", "attempt": 1, "worker": "2", "at": 0.5, "fault": "hang"},
        ],
        columns=metrics.FAULT_COLUMNS,
    )
    return metrics.frame(rows), faults


def markers(ax, label):
    """The (x, y) offsets of the scatter drawn under ``label``."""
    (points,) = [c for c in ax.collections if c.get_label() == label]
    return [tuple(p) for p in points.get_offsets()]


def test_worker_timeline_draws_crashes_hangs_and_restarts_from_the_faults():
    df, faults = chaos_run()
    ax = plots.worker_timeline(df, faults=faults)
    assert markers(ax, "crash (chaos)") == [pytest.approx((0.2, -0.3))]
    assert markers(ax, "hang (chaos)") == [pytest.approx((0.5, 0.7))]
    assert markers(ax, "back at work after a crash") == [pytest.approx((1.2, -0.3))]
    assert {"crash (chaos)", "hang (chaos)", "back at work after a crash"} <= set(legend_labels(ax))
    assert "1 crash" in plots.alt_text(ax) and "1 hang" in plots.alt_text(ax) and "1 restart" in plots.alt_text(ax)


def test_worker_timeline_legend_shows_expired_as_the_cross_it_draws_and_statuses_as_bars():
    df, faults = chaos_run()
    ax = plots.worker_timeline(df, faults=faults)
    expired = legend_handle(ax, "expired (lease ran out)")
    assert isinstance(expired, Line2D) and expired.get_marker() == "x" and expired.get_linestyle() == "None"
    assert markers(ax, "expired (lease ran out)") == [pytest.approx((1.0, 0.0))]
    for label, handle in zip(legend_labels(ax), ax.get_legend().legend_handles, strict=True):
        if label in ("done", "retry"):
            assert isinstance(handle, Rectangle), label
        else:
            assert isinstance(handle, Line2D) and handle.get_marker() not in (None, "None", ""), label


def test_worker_timeline_without_faults_draws_only_what_the_attempts_hold():
    df, _ = chaos_run()
    ax = plots.worker_timeline(df)
    assert legend_labels(ax) == ["done", "retry", "expired (lease ran out)"]


def test_faults_reads_chaos_fault_events_one_row_per_fault(fake_client):
    q = Queue(fake_client, "f")
    q.record_fault("7", 1, "w1", "hang straggle")
    q.record_fault("8", 2, "w2", "crash")
    df = metrics.faults(q)
    assert list(df.columns) == metrics.FAULT_COLUMNS
    assert sorted(zip(df["task_id"], df["attempt"], df["worker"], df["fault"], strict=True)) == [
        ("7", 1, "w1", "hang"),
        ("7", 1, "w1", "straggle"),
        ("8", 2, "w2", "crash"),
    ]
    assert df["at"].dtype == float
    assert metrics.faults(Queue(fake_client, "none")).empty


# -- wait vs theory -------------------------------------------------------------------------


def test_wait_vs_theory_marks_the_mmc_and_mdc_means_and_labels_them():
    rng = np.random.default_rng(0)
    starts = np.cumsum(rng.exponential(0.02, 200))
    df = metrics.frame([row(str(i), "1", s + 0.001, s + 0.011, enqueued=s) for i, s in enumerate(starts)])
    ax = plots.wait_vs_theory(df, arrival_rate=50, service_time_s=0.01, servers=2)
    mm = metrics.mmc_mean_wait(50, 0.01, 2) * 1000
    md = metrics.mdc_mean_wait(50, 0.01, 2) * 1000
    vertical = {line.get_label(): line.get_xdata()[0] for line in ax.get_lines() if len(set(line.get_xdata())) == 1}
    assert vertical[f"M/M/2 mean wait {mm:.1f} ms (random service)"] == pytest.approx(mm)
    assert vertical[f"M/D/2 mean wait {md:.1f} ms (fixed service)"] == pytest.approx(md)
    labels = legend_labels(ax)
    assert "measured waits" in labels and "M/M/2 (Erlang C) distribution" in labels
    assert any(label.startswith("measured mean wait") for label in labels)


# -- alt text -------------------------------------------------------------------------------


def test_outcome_bars_draw_one_labelled_bar_per_queue_and_outcome_zeros_included():
    table = pd.DataFrame({"lost": [4, 0], "completed twice": [0, 0]}, index=["naive loop", "wqsim"])
    ax = plots.outcome_bars(table)
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert [b.get_height() for b in bars] == [4, 0, 0, 0]
    assert [t.get_text() for t in ax.texts] == ["4", "0", "0", "0"]
    assert tick_labels(ax.xaxis) == ["naive loop", "wqsim"] and legend_labels(ax) == ["lost", "completed twice"]
    assert plots.alt_text(ax) == (
        "Bar chart of tasks lost or completed twice, for 2 queues "
        "(naive loop: 4 lost, 0 completed twice; wqsim: 0 lost, 0 completed twice)."
    )


def test_every_plot_writes_alt_text_describing_what_it_drew():
    df = steady(n=40)
    tasks, graph_df = diamond_run()
    axes = {
        "Worker timeline": plots.worker_timeline(df),
        "Gantt chart of 4": plots.dependency_gantt(graph_df, tasks, bounds(tasks, 2)),
        "Throughput over time": plots.throughput_over_time(df),
        "Cumulative distribution of the end-to-end": plots.latency_cdf(df),
        "Histogram of the wait": plots.latency_histogram(df),
        "Queue length over time": plots.queue_length(df),
        "Throughput (tasks/s) against batch size": plots.sweep(
            pd.DataFrame({"batch_size": [1, 10], "tasks_per_s": [1.0, 2.0]}), "batch_size"
        ),
        "Cumulative distribution of queue waits": plots.wait_vs_theory(df, 50, 0.01, 2),
        "Bar chart of tasks lost": plots.outcome_bars(pd.DataFrame({"lost": [3, 0]}, index=["naive", "wqsim"])),
    }
    for start, ax in axes.items():
        text = plots.alt_text(ax)
        assert text.startswith(start) and text.endswith("."), text
    assert plots.alt_text(plt.subplots()[1]) == ""


def test_worker_timeline_marks_no_restart_for_a_crash_the_worker_never_came_back_from():
    df, faults = chaos_run()
    last = pd.DataFrame(
        [{"task_id": "9", "attempt": 1, "worker": "2", "at": 2.5, "fault": "crash"}], columns=metrics.FAULT_COLUMNS
    )
    ax = plots.worker_timeline(df, faults=pd.concat([faults, last], ignore_index=True))
    assert len(markers(ax, "crash (chaos)")) == 2
    assert markers(ax, "back at work after a crash") == [pytest.approx((1.2, -0.3))]  # only worker 1's


def waits_frame(waits_ms):
    return metrics.frame(row(str(i), "1", w / 1000, w / 1000 + 0.01) for i, w in enumerate(waits_ms))


def test_latency_percentiles_are_labelled_to_three_significant_figures():
    ax = plots.latency_histogram(waits_frame([0.4091, 0.4092, 8.0123, 418.57]), "wait")
    assert [label.split(" ", 1)[1] for label in legend_labels(ax)[1:]] == ["4.21 ms", "357 ms", "406 ms"]
    assert "p50 4.21 ms" in plots.alt_text(ax)
    ax = plots.latency_cdf(waits_frame([0.4, 0.41, 0.42]), "wait")
    assert [label for label in legend_labels(ax) if label.startswith("p50")] == ["p50 0.41 ms"]


def test_latency_histogram_puts_its_legend_outside_the_bars():
    ax = plots.latency_histogram(waits_frame([1.0, 2.0, 3.0, 50.0]), "wait")
    anchor = ax.get_legend().get_bbox_to_anchor().transformed(ax.transAxes.inverted())
    assert anchor.x0 > 1.0  # right of the axes: no bar beneath it
