"""wqsim.sim in virtual time: the engine's policies, the outputs of a real run, and queueing theory.

No Redis here: the model runs alone. tests/test_sim_accuracy.py checks it
against the real engine.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from wqsim import ChaosConfig, RunConfig, WorkerConfig, metrics, plots
from wqsim.chaos import draw
from wqsim.sim import CostProfile, default_profile, simulate

ZERO = default_profile().without_overheads()


# -- the outputs of a real run --------------------------------------------------------------


def test_a_simulated_run_gives_the_attempts_frame_of_a_real_one_and_every_metric_and_plot_takes_it():
    report = simulate(RunConfig(tasks=200, workers=3, duration_ms=5, chaos=ChaosConfig(seed=1, fail_p=0.2)))
    df = report.attempts()
    assert list(df.columns) == metrics.COLUMNS
    assert set(df["status"]) == {"done", "retry"}
    assert len(metrics.completed(df)) == 200
    assert (df["started_at"].dropna() >= df.loc[df["started_at"].notna(), "enqueued_at"]).all()
    assert (df["finished_at"] >= df["started_at"]).all()
    assert metrics.makespan(df) == pytest.approx(report.makespan_s)
    assert metrics.throughput(df) == pytest.approx(report.makespan_tasks_per_s)
    assert sorted(df["worker"].unique()) == ["1", "2", "3"]
    for draw_plot in (plots.worker_timeline, plots.throughput_over_time, plots.latency_cdf, plots.queue_length):
        ax = draw_plot(df)
        assert plots.alt_text(ax)
    assert not metrics.latency_percentiles(df).isna().any().any()


def test_the_summary_line_is_a_real_runs_marked_as_simulated():
    report = simulate(RunConfig(tasks=50, workers=2, duration_ms=1))
    assert re.fullmatch(
        r"Summary \(simulated\): 50 done, 0 dead, 0 lost, 0 completed twice, 50 executions; "
        r"[\d.]+ s wall, [\d,]+ tasks/s",
        report.summary(),
    )
    assert report.makespan_summary().startswith("Makespan (simulated) ")
    assert report.ok and report.finished


def test_the_same_config_gives_the_same_run():
    config = RunConfig(tasks=300, workers=4, duration_ms=2, chaos=ChaosConfig(seed=5, crash_p=0.05, fail_p=0.1))
    one, two = simulate(config), simulate(config)
    pd.testing.assert_frame_equal(one.attempts(), two.attempts())


# -- the engine's policies ------------------------------------------------------------------


def test_sleep_tasks_on_workers_take_work_over_workers_plus_the_per_task_costs():
    profile = default_profile()
    report = simulate(RunConfig(tasks=300, workers=3, duration_ms=10), profile, cores=0)
    per_task = 0.010 + profile.sleep_overshoot_s
    ideal = 100 * per_task
    assert ideal < report.makespan_s < ideal * 1.1


def test_batching_spreads_redis_time_over_the_batch_so_noop_throughput_grows():
    one = simulate(RunConfig(tasks=5000, workers=2, kind="noop"))
    hundred = simulate(RunConfig(tasks=5000, workers=2, kind="noop", worker=WorkerConfig(batch_size=100)))
    assert hundred.makespan_tasks_per_s > 2 * one.makespan_tasks_per_s
    assert hundred.redis_calls < one.redis_calls / 20


def test_past_the_redis_threads_capacity_more_workers_add_nothing():
    profile = default_profile()
    capacity = profile.redis_capacity(1)
    rates = [
        simulate(RunConfig(tasks=20_000, workers=w, kind="noop"), profile, cores=0).makespan_tasks_per_s
        for w in (50, 200)
    ]
    assert rates[0] > 0.8 * capacity
    assert rates[1] <= capacity * 1.01
    assert rates[1] < 1.1 * rates[0]


def test_every_fault_is_drawn_as_a_real_run_draws_it():
    chaos = ChaosConfig(seed=9, fail_p=0.3)
    report = simulate(RunConfig(tasks=200, workers=2, duration_ms=1, max_attempts=5, chaos=chaos))
    df = report.attempts()
    expected = {
        (str(task), attempt)
        for task in range(1, 201)
        for attempt in range(1, 6)
        if draw(chaos, str(task), attempt).fail and all(draw(chaos, str(task), a).fail for a in range(1, attempt))
    }
    retried = {(r.task_id, r.attempt) for r in df[df["status"] == "retry"].itertuples()}
    assert retried == expected


def test_a_task_that_always_fails_is_dead_after_max_attempts_with_backoff_between():
    config = RunConfig(
        tasks=1,
        workers=1,
        duration_ms=0,
        max_attempts=3,
        chaos=ChaosConfig(fail_p=1.0),
        worker=WorkerConfig(backoff_s=0.1),
    )
    df = simulate(config).attempts().sort_values("attempt")
    assert list(df["status"]) == ["retry", "retry", "dead"]
    gaps = df["started_at"].diff().dropna().to_numpy()
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # backoff_s * 2**(attempt - 1)


def test_a_crashed_workers_task_comes_back_after_its_lease_and_a_replacement_runs_it():
    config = RunConfig(
        tasks=20,
        workers=1,
        duration_ms=10,
        max_attempts=3,
        worker=WorkerConfig(lease_s=0.3),
        chaos=ChaosConfig(seed=2, crash_p=0.1),
    )
    crashed = [t for t in range(1, 21) if draw(config.chaos, str(t), 1).crash]
    assert crashed, "the seed crashes no task: pick another"
    report = simulate(config)
    df = report.attempts()
    assert report.restarts == len(crashed) + sum(draw(config.chaos, str(t), 2).crash for t in crashed)
    expired = df[df["status"] == "expired"]
    assert set(expired["task_id"]) == {str(t) for t in crashed}
    for row in expired.itertuples():  # returned a lease after the crash, half-way through the task
        done = df[(df["task_id"] == row.task_id) & (df["status"] == "done")]
        assert done["started_at"].min() >= row.finished_at
    assert report.audit.done == 20 and report.reaped >= len(crashed)


def test_a_hang_past_the_lease_makes_a_re_execution_and_the_late_result_is_rejected():
    config = RunConfig(
        tasks=1,
        workers=2,
        duration_ms=10,
        worker=WorkerConfig(lease_s=0.2),
        chaos=ChaosConfig(hang_p=1.0, hang_s=0.5),
        max_attempts=2,
    )
    report = simulate(config)
    # Attempt 1 hangs past its lease: reaped, and its late result refused. Attempt 2 hangs too
    # (hang_p 1) and, being the last, is dead-lettered when its lease expires.
    assert report.audit.rejected >= 1
    assert report.audit.executions == 2
    assert report.audit.dead == 1


def test_a_hang_shorter_than_the_lease_costs_time_but_no_re_execution():
    config = RunConfig(
        tasks=10, workers=2, duration_ms=10, worker=WorkerConfig(lease_s=1.0), chaos=ChaosConfig(hang_p=1.0, hang_s=0.2)
    )
    report = simulate(config)
    assert report.audit.executions == 10 and report.audit.rejected == 0 and report.reaped == 0
    assert report.makespan_s >= 5 * 0.21


def test_without_heartbeats_a_task_longer_than_the_lease_is_reaped_while_it_runs():
    config = RunConfig(
        tasks=1, workers=1, duration_ms=500, max_attempts=2, worker=WorkerConfig(lease_s=0.2, heartbeat=False)
    )
    pinged = simulate(replace(config, worker=replace(config.worker, heartbeat=True)))
    unpinged = simulate(config)
    assert pinged.audit.done == 1 and pinged.reaped == 0 and pinged.heartbeats >= 2
    assert unpinged.audit.dead == 1 and unpinged.reaped == 2


def test_a_graphs_dependents_start_after_their_prerequisites_and_a_failure_cancels_them():
    report = simulate(RunConfig(graph="layered", tasks=40, workers=3, duration_ms=2))
    df = report.attempts().set_index("task_id")
    from wqsim.graph import example

    for task in example("layered", 40, 2.0):
        for dep in task.depends_on:
            assert df.loc[task.id, "started_at"] >= df.loc[dep, "finished_at"]
    assert report.bounds is not None and report.makespan_s >= report.bounds.critical_path_s
    failing = simulate(RunConfig(graph="chain", tasks=5, workers=2, max_attempts=1, chaos=ChaosConfig(fail_p=1.0)))
    assert (failing.audit.dead, failing.audit.cancelled, failing.audit.done) == (1, 4, 0)


def test_open_loop_arrivals_follow_the_seeded_schedule_of_a_real_run():
    from wqsim.generator import arrival_offsets

    config = RunConfig(tasks=100, workers=2, duration_ms=1, arrival_rate=200, arrival_seed=4)
    df = simulate(config, ZERO).attempts().sort_values("enqueued_at")
    offsets = df["enqueued_at"].to_numpy() - df["enqueued_at"].min()
    assert offsets == pytest.approx(arrival_offsets(100, 200, 4), abs=1e-9)


# -- against queueing theory, with every overhead zero ---------------------------------------


@pytest.mark.parametrize("service", ["exponential", "fixed"])
def test_with_zero_overheads_long_runs_reproduce_mmc_and_mdc_mean_waits_within_3_percent(service):
    """M/M/2 and M/D/2 at utilisation 0.7: four replications of 50,000 tasks, their waits pooled.

    Without prefetch: a claim made ahead holds a task in reserve, which no M/M/c server does.
    One run's mean wait still swings by a few percent with its seed (long waits come in
    bursts), so the replications' pooled mean is what is compared.
    """
    servers, rate = 2, 0.7 * 2 / 0.010
    waits = []
    for seed in range(1, 5):
        config = RunConfig(
            tasks=50_000,
            workers=servers,
            duration_ms=10,
            arrival_rate=rate,
            arrival_seed=seed,
            service=service,
            worker=WorkerConfig(prefetch=0),
        )
        waits.append(metrics.latencies(simulate(config, ZERO).attempts())["wait"])
    measured = float(pd.concat(waits).mean())
    theory = (
        metrics.mmc_mean_wait(rate, 0.010, servers)
        if service == "exponential"
        else metrics.mdc_mean_wait_exact(rate, 0.010, servers)
    )
    assert measured == pytest.approx(theory, rel=0.03)


def test_the_exact_md1_wait_is_pollaczek_khinchine_and_mdc_lies_between_the_plain_half_and_mmc():
    assert metrics.mdc_mean_wait_exact(75, 0.010, 1) == pytest.approx(0.75 * 0.010 / (2 * 0.25), rel=1e-9)
    exact = metrics.mdc_mean_wait_exact(150, 0.010, 2)
    assert metrics.mdc_mean_wait(150, 0.010, 2) < exact < metrics.mmc_mean_wait(150, 0.010, 2)
    assert exact == pytest.approx(0.00657, abs=2e-5)  # M/D/2 at 0.75: 6.61 ms simulated, 6.55 by Cosmetatos
    assert math.isinf(metrics.mdc_mean_wait_exact(200, 0.010, 2))


# -- the profile ----------------------------------------------------------------------------


def test_a_profile_round_trips_through_json_and_a_bad_one_is_one_clear_error(tmp_path):
    profile = default_profile()
    path = tmp_path / "p.json"
    profile.save(path)
    assert CostProfile.load(path) == profile
    path.write_text(json.dumps({**json.loads(profile.to_json()), "round_trip_s": -1}))
    with pytest.raises(ValueError, match="round_trip_s must be a finite number >= 0"):
        CostProfile.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        CostProfile.load(path)
    with pytest.raises(ValueError, match="cannot read cost profile"):
        CostProfile.load(tmp_path / "missing.json")


def test_the_packaged_profile_was_measured_on_a_real_machine():
    profile = default_profile()
    assert profile.measured_at and "cores" in profile.machine
    assert 0 < profile.round_trip_s < 0.01 and 0 < profile.server_call_s < 0.01


# -- the command line ------------------------------------------------------------------------


def wqsim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wqsim", *args], capture_output=True, text=True, timeout=120)


def test_wqsim_sim_prints_the_summary_lines_of_a_run_marked_as_simulated():
    proc = wqsim("sim", "--tasks", "2000", "--workers", "8", "--kind", "noop", "--batch-size", "10")
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 1)[1] for line in proc.stderr.splitlines()]
    assert lines[0].startswith("Summary (simulated): 2000 done, 0 dead, 0 lost, 0 completed twice, 2000 executions;")
    assert lines[1].startswith("Makespan (simulated)")
    assert lines[2].startswith("Redis (simulated):")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--kind", "email"), "wqsim sim models the kinds sleep, noop (got 'email')"),
        (("--profile", "/nonexistent.json"), "cannot read cost profile /nonexistent.json"),
        (("--cores", "-1"), "argument --cores: cores must be an integer >= 0 (got -1)"),
        (("--service", "gamma"), "argument --service: invalid choice: 'gamma'"),
    ],
)
def test_wqsim_sim_refuses_bad_input_in_one_line_with_exit_2(args, message):
    proc = wqsim("sim", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"wqsim: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr


# -- the benchmark's pieces -------------------------------------------------------------------


def test_the_knee_sweep_flattens_where_the_profile_says_redis_saturates_and_batching_moves_it():
    from benchmarks import sim

    found = sim.knee(tasks=40_000, workers=(1, 10, 100, 200))
    rates = {(r["batch"], r["workers"]): r["tasks_per_s"] for r in found["rows"]}
    capacity = found["redis_capacity"]
    assert 0.8 * capacity[1] < rates[(1, 200)] <= capacity[1] * 1.05  # the first claims settle nothing: a little over
    assert rates[(1, 10)] < rates[(1, 100)] * 1.05  # growing, then flat
    assert capacity[100] > 3 * capacity[1] and rates[(100, 10)] > 3 * rates[(1, 200)]
    # no steady rate past the Redis thread's capacity: runs whose workers hold most of the tasks
    # (claimed ahead) are left out, as they would measure start-up
    assert (100, 200) not in rates
    assert all(rate <= capacity[batch] * 1.05 for (batch, _), rate in rates.items())
    text = sim.table(
        {
            "scale": {"command": "sim", "wall_s": 1.0, "summary": "Summary (simulated): ..."},
            "knee": found,
            "accuracy": {"rows": []},
        }
    )
    assert "Redis capacity" in text and "| grid point |" in text
