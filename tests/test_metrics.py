"""wqsim.metrics and wqsim.plots on synthetic runs whose answers are known in advance."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import time  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from wqsim import (  # noqa: E402
    Queue,
    Settlement,
    Worker,
    WorkerConfig,
    arrivals,
    bounds,
    diamond,
    generate,
    metrics,
    plots,
)


def synthetic(n: int = 100, workers: int = 2, service_s: float = 0.01, gap_s: float = 0.0) -> metrics.pd.DataFrame:
    """n tasks all enqueued at t=1000, run back to back on ``workers`` workers, each taking service_s."""
    rows = []
    for i in range(n):
        worker = str(i % workers + 1)
        slot = i // workers
        start = 1000.0 + slot * (service_s + gap_s)
        rows.append(
            {
                "task_id": str(i),
                "kind": "sleep",
                "package": "",
                "attempt": 1,
                "worker": worker,
                "enqueued_at": 1000.0,
                "started_at": start,
                "finished_at": start + service_s,
                "status": "done",
                "error": "",
            }
        )
    return metrics.frame(rows, "synthetic")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_throughput_and_makespan_of_a_known_schedule():
    df = synthetic(n=100, workers=2, service_s=0.01)
    assert metrics.makespan(df) == pytest.approx(0.5)
    assert metrics.throughput(df) == pytest.approx(200.0)
    assert metrics.ideal_makespan(df, workers=2) == pytest.approx(0.5)
    assert metrics.utilisation(df).to_dict() == pytest.approx({"1": 1.0, "2": 1.0})
    assert metrics.executions(df) == {"executions": 100, "completions": 100}


def test_throughput_over_time_counts_completions_per_bin():
    df = synthetic(n=100, workers=2, service_s=0.007)  # 2 per 7 ms; no finish falls on a 0.1 s bin edge
    series = metrics.throughput_over_time(df, bin_s=0.1)
    widths = np.diff(np.append(series.index, metrics.makespan(df)))
    assert (series * widths).sum() == pytest.approx(100)
    assert set(series.iloc[:-1].round().astype(int)) <= {280, 300}  # 14 or 15 per worker per full bin
    assert series.iloc[-1] == pytest.approx(2 / 0.007, rel=0.1)  # the partial last bin at the same rate: no dip


def test_latency_percentiles_of_known_waits():
    df = synthetic(n=100, workers=1, service_s=0.01)  # the k-th task waits k * 10 ms
    table = metrics.latency_percentiles(df)
    assert table.loc["service"].to_numpy() == pytest.approx([0.01, 0.01, 0.01])
    waits = np.arange(100) * 0.01
    assert table.loc["wait", "p50"] == pytest.approx(np.percentile(waits, 50))
    assert table.loc["wait", "p99"] == pytest.approx(np.percentile(waits, 99))
    assert table.loc["end_to_end", "p95"] == pytest.approx(np.percentile(waits + 0.01, 95))


def test_queue_length_steps_down_as_tasks_start():
    df = synthetic(n=4, workers=1, service_s=1.0)
    length = metrics.queue_length(df)
    assert list(length.to_numpy()) == [3, 2, 1, 0]  # all four arrive at once and the first starts at once
    assert list(length.index) == [0.0, 1.0, 2.0, 3.0]


def test_erlang_c_matches_the_textbook_case():
    # 100 calls per 30 minutes, 180 s handling time, 14 agents: P(wait) = 0.174 (a standard worked example).
    assert metrics.erlang_c(100 / 1800, 180, 14) == pytest.approx(0.174, abs=0.001)
    assert metrics.erlang_c(1.0, 2.0, 2) == 1.0  # overloaded: everybody waits
    assert metrics.mmc_mean_wait(0.5, 1.0, 1) == pytest.approx(1.0)  # M/M/1: rho / (mu - lambda)
    assert metrics.mdc_mean_wait(0.5, 1.0, 1) == pytest.approx(0.5)  # M/D/1: half of it (Pollaczek-Khinchine)
    with pytest.raises(ValueError):
        metrics.erlang_c(1.0, 1.0, 0)


def test_attempts_reads_retries_and_final_outcomes_from_redis(fake_client):
    q = Queue(fake_client, "m")
    generate(q, 2, duration_ms=0)
    claim = q.claim("w", lease_ms=10_000, count=2)
    q.settle(
        "w",
        [
            Settlement("1", claim.lease, "retry", "boom", 10.0, 11.0),
            Settlement("2", claim.lease, "done", "null", 10.0, 12.0),
        ],
        lease_ms=10_000,
    )
    Worker(fake_client, "m", "w2", WorkerConfig(idle_wait_s=0.01, backoff_s=0.001)).run()
    df = metrics.attempts(q)
    assert sorted(zip(df["task_id"], df["attempt"], df["status"], strict=False)) == [
        ("1", 1, "retry"),
        ("1", 2, "done"),
        ("2", 1, "done"),
    ]
    retry = df[df["status"] == "retry"].iloc[0]
    assert (retry["started_at"], retry["finished_at"], retry["worker"], retry["error"]) == (10.0, 11.0, "w", "boom")
    assert metrics.executions(df) == {"executions": 3, "completions": 2}


def test_every_plot_returns_labelled_axes():
    df = synthetic(n=40, workers=2, service_s=0.01)
    tasks = diamond(prefix="s")
    graph_df = metrics.frame(
        [
            {
                "task_id": t.id,
                "worker": "1",
                "attempt": 1,
                "status": "done",
                "enqueued_at": 0.0,
                "started_at": float(i),
                "finished_at": float(i) + 0.5,
            }
            for i, t in enumerate(tasks)
        ]
    )
    axes = [
        plots.worker_timeline(df),
        plots.dependency_gantt(graph_df, tasks, bounds(tasks, 2)),
        plots.throughput_over_time(df),
        plots.latency_cdf(df),
        plots.latency_histogram(df),
        plots.queue_length(df),
        plots.sweep(metrics.pd.DataFrame({"batch_size": [1, 10, 100], "tasks_per_s": [1e4, 5e4, 1e5]}), "batch_size"),
        plots.wait_vs_theory(df, arrival_rate=50, service_time_s=0.01, servers=2),
    ]
    for ax in axes:
        assert ax.get_title() and ax.get_xlabel(), ax
        assert "(s)" in ax.get_xlabel() or "(ms)" in ax.get_xlabel() or "size" in ax.get_xlabel()
    gantt = axes[1]
    assert len(gantt.patches) == 4  # one bar per task
    assert len([t for t in gantt.texts]) == 4  # one arrow per dependency edge: a->b, a->c, b->d, c->d
    assert any("critical path 0.030 s" in t.get_text() for t in gantt.get_legend().get_texts())


def test_arrivals_are_a_seeded_poisson_process_enqueued_on_schedule(fake_client):
    q = Queue(fake_client, "arrivals")
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    ids = arrivals(q, 2000, rate_per_s=100.0, duration_ms=1, seed=5, clock=lambda: now[0], sleep=sleep)
    assert len(ids) == 2000 and q.counters()["total"] == 2000
    assert sum(slept) == pytest.approx(2000 / 100.0, rel=0.1)  # mean gap 1 / rate
    gaps = np.array(slept)
    assert gaps.std() == pytest.approx(gaps.mean(), rel=0.15)  # exponential: sd equals the mean
    again: list[float] = []
    arrivals(Queue(fake_client, "again"), 50, 100.0, seed=5, clock=lambda: 0.0, sleep=again.append)
    assert again == pytest.approx(list(np.cumsum(slept[:49])))  # the same seed, the same schedule (a frozen clock)
    with pytest.raises(ValueError, match=r"rate_per_s must be a positive, finite number \(got 0\)"):
        arrivals(q, 1, rate_per_s=0)


def test_length_sampler_observes_queued_and_running_tasks(fake_client):
    q = Queue(fake_client, "sampled")
    generate(q, 5, kind="noop")
    q.claim("w", lease_ms=10_000, count=2)
    with metrics.LengthSampler(q, every_s=0.005) as sampler:
        time.sleep(0.05)
    df = sampler.frame()
    assert len(df) >= 2
    assert set(zip(df["queued"], df["running"], df["in_system"], strict=False)) == {(3, 2, 5)}


def test_littles_law_from_samples_compares_an_observed_L_with_lambda_times_W():
    df = synthetic(n=100, workers=1, service_s=0.01)  # all arrive at 1000.0, one at a time in service
    samples = metrics.pd.DataFrame({"at": [1000.0, 1000.5, 1000.99], "queued": [99, 49, 0], "running": [1, 1, 1]})
    samples["in_system"] = samples["queued"] + samples["running"]
    result = metrics.littles_law_sampled(df, samples)
    assert result["L_sampled"] == pytest.approx((100 + 50 + 1) / 3)
    assert result["arrival_rate"] == pytest.approx(100.0)
    assert result["L_predicted"] == pytest.approx(100.0 * 0.505)


@pytest.mark.real_redis
def test_a_runs_reported_makespan_is_metrics_makespan_of_its_attempts(redis_url, queue_name):
    from wqsim import RunConfig, connect, run

    report = run(RunConfig(queue=queue_name, tasks=12, workers=2, duration_ms=5, mode="thread"), url=redis_url)
    df = metrics.attempts(Queue(connect(redis_url), queue_name))
    assert report.makespan_s == metrics.makespan(df) > 0
