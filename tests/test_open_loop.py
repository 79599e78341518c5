"""Open-loop runs (RunConfig.arrival_rate), the report's attempts and throughputs, heartbeat counts,
sweeps, and the workbench's fit of an effective service time."""

from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import wqsim  # noqa: E402
from wqsim import (  # noqa: E402
    Queue,
    RunConfig,
    Settlement,
    WorkerConfig,
    arrival_offsets,
    generate,
    metrics,
    plots,
    run,
)
from wqsim.openloop import measured_rate, open_loop, predict  # noqa: E402
from wqsim.retention import Retention  # noqa: E402
from wqsim.server import RedisServer  # noqa: E402
from wqsim.sweeps import vary  # noqa: E402

# -- the arrival schedule ----------------------------------------------------------------


def test_arrival_offsets_are_the_same_for_a_seed_and_differ_for_another():
    assert arrival_offsets(50, 100.0, seed=3) == arrival_offsets(50, 100.0, seed=3)
    assert arrival_offsets(50, 100.0, seed=3) != arrival_offsets(50, 100.0, seed=4)


def test_arrival_offsets_start_at_zero_and_their_gaps_average_one_over_the_rate():
    offsets = arrival_offsets(20_000, 250.0, seed=0)
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert offsets[0] == 0.0 and min(gaps) >= 0
    assert statistics.fmean(gaps) == pytest.approx(1 / 250.0, rel=0.03)
    assert statistics.stdev(gaps) == pytest.approx(1 / 250.0, rel=0.05)  # exponential: sd equals the mean


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arrival_rate": 0.0}, r"arrival_rate must be a positive, finite number \(got 0.0\)"),
        ({"arrival_rate": float("inf")}, "arrival_rate must be a positive, finite number"),
        ({"arrival_rate": 10.0, "graph": "chain"}, "arrival_rate cannot be combined with a graph"),
        ({"arrival_rate": 10.0, "package_size": 5}, "arrival_rate cannot be combined with package_size"),
        ({"arrival_seed": 1.5}, r"arrival_seed must be an integer \(got 1.5\)"),
    ],
)
def test_run_config_refuses_an_arrival_rate_it_cannot_honour(changes, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)


# -- a producer holds the queue open ------------------------------------------------------


def test_a_producer_holding_the_queue_open_keeps_it_from_draining_until_released(make_queue):
    q = make_queue()
    q.hold_open("arrivals")
    generate(q, 1)
    claim = q.claim("w1", lease_ms=5000)
    q.settle("w1", [Settlement(claim.tasks[0].id, claim.lease, "done", "null", 1.0, 2.0)], lease_ms=1000)
    idle = q.claim("w2", lease_ms=5000)
    assert not idle.drained and not q.drained()  # every task so far is done, but more are coming
    assert idle.state == "ok"  # not 'stranded': nothing was lost, the next task has not arrived yet
    q.release_hold("arrivals")
    assert q.client.llen(q.keys.signal) == 1  # an idle worker is woken to see it
    assert q.claim("w2", lease_ms=5000).drained and q.drained()
    assert not q.client.exists(q.keys.producers)  # gone with its last member


# -- heartbeat counts ---------------------------------------------------------------------


def test_heartbeats_and_the_leases_they_renew_are_counted_in_the_stats_hash(make_queue):
    q = make_queue()
    generate(q, 2)
    a, b = q.claim("w1", lease_ms=5000).lease, q.claim("w1", lease_ms=5000).lease
    q.heartbeat([a, b], lease_ms=5000)
    q.client.delete(q.keys.lease(b))  # as if Redis had expired it
    assert q.heartbeat([a, b], lease_ms=5000) == [b]
    counters = q.counters()
    assert counters["heartbeats"] == 2 and counters["renewed"] == 3


def test_a_heartbeat_on_a_queue_whose_stats_hash_is_gone_counts_nothing_and_recreates_nothing(make_queue):
    q = make_queue()
    generate(q, 1)
    lease = q.claim("w1", lease_ms=5000).lease
    q.client.delete(q.keys.stats)  # lost (an eviction, a restart without persistence)
    assert q.heartbeat([lease], lease_ms=5000) == []
    assert not q.client.exists(q.keys.stats)


# -- metrics: the hand-off and the effective service time ---------------------------------


def attempts_frame(rows):
    keys = ("task_id", "worker", "enqueued_at", "started_at", "finished_at")
    return metrics.frame([{**dict(zip(keys, r, strict=True)), "status": "done", "attempt": 1} for r in rows])


def test_handoff_gaps_count_only_the_gaps_where_the_next_task_was_already_waiting():
    df = attempts_frame(
        [
            ("1", "a", 0.0, 0.000, 0.010),
            ("2", "a", 0.0, 0.011, 0.021),  # waiting since 0: a 1 ms hand-off
            ("3", "a", 0.0, 0.023, 0.033),  # a 2 ms hand-off
            ("4", "a", 0.050, 0.051, 0.061),  # arrived after 0.033: the worker was idle, not handing off
            ("5", "b", 0.0, 0.000, 0.010),
            ("6", "b", 0.0, 0.013, 0.023),  # 3 ms
        ]
    )
    assert sorted(metrics.handoff_gaps(df).round(6)) == [0.001, 0.002, 0.003]
    assert metrics.effective_service_time(df) == pytest.approx(0.010 + 0.002)


def test_the_effective_service_time_needs_a_completed_attempt():
    with pytest.raises(ValueError, match="no completed attempts"):
        metrics.effective_service_time(attempts_frame([]))


def test_predictions_grow_much_faster_than_the_service_time_near_saturation():
    """The nb04 lesson in numbers: 6 % more service time near 0.75 utilisation, about 40 % more wait."""
    nominal, effective = predict(150.0, 0.010, 2), predict(150.0, 0.0106, 2)
    assert effective.mdc_wait_s / nominal.mdc_wait_s > 1.3
    assert predict(250.0, 0.010, 2).mdc_wait_s == float("inf")  # utilisation 1.25: unstable


# -- sweeps ---------------------------------------------------------------------------------


def test_vary_replaces_a_run_field_or_a_dotted_worker_field_and_refuses_anything_else():
    base = RunConfig(tasks=5, workers=1)
    assert vary(base, "workers", 3).workers == 3
    assert vary(base, "worker.batch_size", 10).worker.batch_size == 10
    with pytest.raises(ValueError, match="param must name a RunConfig field"):
        vary(base, "nope", 1)
    with pytest.raises(ValueError, match="param must name a RunConfig field"):
        vary(base, "queue.name", 1)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        vary(base, "workers", 0)


@pytest.mark.real_redis
def test_a_sweep_gives_one_row_per_value_that_plots_sweep_can_draw(redis_url, queue_name):
    base = RunConfig(queue=queue_name, tasks=30, workers=1, duration_ms=1.0, mode="thread")
    table = wqsim.sweep(base, "worker.batch_size", [1, 5], url=redis_url)
    assert list(table["batch_size"]) == [1, 5]
    assert list(table["done"]) == [30, 30] and table["ok"].all()
    assert (table["makespan_tasks_per_s"] >= table["tasks_per_s"]).all()
    assert (table["wait_p50_s"] <= table["wait_p95_s"]).all() and (table["wait_p95_s"] <= table["wait_p99_s"]).all()
    ax = plots.sweep(table, "batch_size")
    assert "2 runs" in plots.alt_text(ax)
    plt.close("all")


def test_a_sweep_with_a_bad_value_fails_before_any_run(fake_client, queue_name):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        wqsim.sweep(RunConfig(queue=queue_name, tasks=5), "workers", [1, 0], url="redis://127.0.0.1:1/0")


# -- runs -----------------------------------------------------------------------------------


@pytest.mark.real_redis
def test_an_open_loop_run_is_clean_and_its_arrivals_span_about_tasks_over_rate(redis_url, queue_name):
    n, rate = 120, 300.0
    config = RunConfig(
        queue=queue_name, tasks=n, workers=2, duration_ms=1.0, arrival_rate=rate, worker=WorkerConfig(lease_s=0.3)
    )
    report = run(config, url=redis_url)
    assert report.ok and report.audit.done == n and report.audit.generated == n
    df = report.attempts()
    span = df["enqueued_at"].max() - df["enqueued_at"].min()
    expected = arrival_offsets(n, rate, config.arrival_seed)[-1]  # about n / rate
    assert 0.9 * expected <= span <= expected + 1.0  # never sooner than scheduled; late only by a loaded host
    assert measured_rate(df) == pytest.approx((n - 1) / span)


@pytest.mark.real_redis
def test_the_report_keeps_its_attempts_after_its_embedded_redis_is_gone(queue_name):
    with RedisServer() as server:
        report = run(RunConfig(queue=queue_name, tasks=20, workers=1, duration_ms=0.0, mode="thread"), url=server.url)
    df = report.attempts()
    assert len(df) == 20 and set(df["status"]) == {"done"}
    df["status"] = "changed"
    assert set(report.attempts()["status"]) == {"done"}  # a copy: the report's own stays as read


@pytest.mark.real_redis
def test_makespan_throughput_is_metrics_throughput_and_at_least_the_wall_clock_one(redis_url, queue_name):
    report = run(RunConfig(queue=queue_name, tasks=60, workers=2, duration_ms=2.0), url=redis_url)
    assert report.makespan_tasks_per_s == pytest.approx(metrics.throughput(report.attempts()))
    assert report.makespan_s <= report.wall_s + 0.005  # the makespan lies inside the wall time
    assert report.makespan_tasks_per_s >= report.tasks_per_s * 0.99


@pytest.mark.real_redis
def test_a_run_reports_the_heartbeats_of_its_worker_processes(redis_url, queue_name):
    """WorkerStats counts heartbeats inside each process; the stats hash counts them for the run."""
    config = RunConfig(
        queue=queue_name, tasks=6, workers=2, duration_ms=100.0, worker=WorkerConfig(lease_s=0.6, ping_interval_s=0.02)
    )
    report = run(config, url=redis_url)
    assert report.ok
    assert report.heartbeats >= 3 and report.renewed >= 3
    assert Queue(wqsim.connect(redis_url), queue_name).counters()["heartbeats"] == report.heartbeats


@pytest.mark.real_redis
def test_open_loop_fits_an_effective_service_time_no_shorter_than_the_handlers(redis_url, queue_name):
    config = RunConfig(queue=queue_name, tasks=80, workers=2, duration_ms=5.0, arrival_rate=200.0)
    result = open_loop(config, url=redis_url)
    assert result.report.ok
    assert result.effective.service_s >= 0.005  # a sleep never ends early, and the hand-off adds to it
    assert result.effective.utilisation == pytest.approx(result.measured_rate * result.effective.service_s / 2)
    table = result.table()
    assert list(table.index) == ["nominal", "effective"] and table["service_ms"]["nominal"] == pytest.approx(5.0)
    assert len(result.summary().splitlines()) == 3
    ax = plots.predicted_waits(result)
    assert plots.alt_text(ax).startswith("Bar chart of mean queue waits on 2 workers")
    plt.close("all")


def test_open_loop_needs_an_arrival_rate():
    with pytest.raises(ValueError, match="needs a config with an arrival_rate"):
        open_loop(RunConfig(tasks=5))


@pytest.mark.real_redis
def test_the_workbench_runs_an_open_loop_experiment_from_plain_numbers_and_draws_it(redis_url, queue_name):
    result = wqsim.workbench(
        queue_name, arrival_rate=200.0, workers=2, service_ms=2.0, batch_size=3, tasks=60, url=redis_url, progress=False
    )
    assert isinstance(result, wqsim.OpenLoop) and result.report.ok and result.report.config.worker.batch_size == 3
    figure = plt.gcf()
    assert [plots.alt_text(ax)[:40] for ax in figure.axes] == [
        "Cumulative distribution of queue waits, ",
        "Bar chart of mean queue waits on 2 worke",
    ]
    plt.close("all")


def test_arrivals_stopped_before_they_start_release_the_queue_at_once(make_queue):
    q = make_queue()
    producer = wqsim.ArrivalThread(q, 10, 100.0).hold()
    assert q.client.exists(q.keys.producers)
    producer.stop()
    assert not q.client.exists(q.keys.producers) and producer.join(0.0) and producer.enqueued == []


def test_arrivals_enqueue_on_schedule_then_release_the_queue(make_queue):
    q = make_queue()
    producer = wqsim.ArrivalThread(q, 5, 1000.0, duration_ms=0.0).start()
    assert producer.join(10.0) and not producer.failed
    assert producer.enqueued == ["1", "2", "3", "4", "5"] and q.counters()["total"] == 5
    assert not q.client.exists(q.keys.producers)


@pytest.mark.real_redis
def test_makespan_throughput_counts_only_the_tasks_whose_times_the_retention_policy_kept(redis_url, queue_name):
    """Past keep_done the oldest done hashes are retired with their times: tasks done over the kept
    tasks' makespan would overstate the rate (3 workers of no-op tasks showed 117,000 tasks/s that way,
    against 37,600 by the wall clock)."""
    config = RunConfig(queue=queue_name, tasks=90, workers=1, duration_ms=1.0, retention=Retention(keep_done=30))
    report = run(config, url=redis_url)
    df = report.attempts()
    assert report.audit.done == 90 and len(metrics.completed(df)) == 30
    assert report.makespan_tasks_per_s == pytest.approx(30 / report.makespan_s)
    assert report.makespan_tasks_per_s < 0.5 * report.audit.done / report.makespan_s  # not 90 over 30's makespan
