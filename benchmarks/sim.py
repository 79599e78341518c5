"""The simulation's benchmark: its speed at scale, the Redis knee, and its accuracy against the real engine.

``python -m benchmarks --sim`` (``make bench ARGS=--sim``):

1. scale: ``wqsim sim --tasks 1000000 --workers 1000 --kind noop``, timed (target: 60 s);
2. the knee: no-op throughput against workers, 1 to 1,000, for batch 1 and batch 100,
   beside the capacity of the Redis thread that the profile predicts;
3. the grid of wqsim.sim.accuracy, real and simulated side by side on a redis-server
   started for it, after calibrating on that server: the table the README shows.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from wqsim import RedisServer, RunConfig, WorkerConfig, metrics
from wqsim.sim import calibrate, default_profile, simulate
from wqsim.sim.accuracy import TARGETS, compare, grid

log = logging.getLogger("benchmarks.sim")

KNEE_WORKERS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def scale() -> dict[str, Any]:
    """The command of the issue's target, run as a user would, timed from outside."""
    command = [sys.executable, "-m", "wqsim", "sim", "--tasks", "1000000", "--workers", "1000", "--kind", "noop"]
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    summary = next(line for line in proc.stderr.splitlines() if "Summary (simulated)" in line)
    return {"command": " ".join(command[1:]), "wall_s": round(wall, 1), "summary": summary.split(" ", 1)[1]}


def knee(tasks: int = 50_000, workers: tuple[int, ...] = KNEE_WORKERS) -> dict[str, Any]:
    """Steady throughput against workers for batch 1 and 100, workers on hosts of their own (cores=0)."""
    profile = default_profile()
    rows = []
    for batch in (1, 100):
        # A worker holds its batch and the batches it claims ahead: past half of the run's tasks in
        # hand (batches of 100 on more than 80 workers here), the run is all start-up and no steady state.
        in_hand = batch * (1 + WorkerConfig().prefetch)
        for count in [w for w in workers if batch == 1 or w * in_hand * 2 <= tasks]:
            config = RunConfig(tasks=tasks, workers=count, kind="noop", worker=WorkerConfig(batch_size=batch))
            report = simulate(config, profile, cores=0)
            # The steady rate: the median of 20 bins. Short runs on many workers are mostly start-up and
            # wind-down, and results still queued at Redis after the last finish fall outside the makespan.
            bins = metrics.throughput_over_time(report.attempts(), bin_s=max(report.makespan_s / 20, 1e-6))
            rows.append(
                {
                    "batch": batch,
                    "workers": count,
                    "tasks_per_s": round(float(bins.median())),
                    "redis_utilisation": round(report.redis_utilisation, 3),
                }
            )
    capacity = {batch: round(profile.redis_capacity(batch)) for batch in (1, 100)}
    return {"rows": rows, "redis_capacity": capacity}


def accuracy() -> dict[str, Any]:
    """Calibrate on a fresh redis-server, then every grid point real and simulated."""
    rows = []
    with RedisServer() as server:
        profile = calibrate(server.url)
        for point in grid():
            comparison = compare(point, profile, server.url)
            for what in point.judged_on:
                rows.append(
                    {
                        "point": point.name,
                        "measure": what,
                        "measured": comparison.measured[what],
                        "predicted": comparison.predicted[what],
                        "error": comparison.error(what),
                        "target": TARGETS[what],
                    }
                )
            log.info("%s: %s", point.name, ", ".join(f"{w} {comparison.error(w):+.1%}" for w in point.judged_on))
    return {"profile": json.loads(profile.to_json()), "rows": rows}


def _unit(what: str, value: float) -> str:
    if what == "throughput":
        return f"{value:,.0f}/s"
    if what == "re-executions":
        return f"{value:.0f}"
    return f"{value * 1000:.2f} ms"


def table(results: dict[str, Any]) -> str:
    lines = [f"Scale: {results['scale']['command']}: {results['scale']['wall_s']} s wall"]
    lines.append(f"  {results['scale']['summary']}")
    lines.append("")
    lines.append("Knee (no-op, workers on hosts of their own): tasks/s by workers")
    knee_rows = results["knee"]["rows"]
    capacity = {int(b): c for b, c in results["knee"]["redis_capacity"].items()}  # JSON keys are strings
    for batch in (1, 100):
        cells = [f"{r['workers']}:{r['tasks_per_s']:,}" for r in knee_rows if r["batch"] == batch]
        lines.append(f"  batch {batch:>3} (Redis capacity {capacity[batch]:,}/s): {' '.join(cells)}")
    lines.append("")
    lines.append("| grid point | measure | measured | predicted | error | target |")
    lines.append("|---|---|---:|---:|---:|---:|")
    for r in results["accuracy"]["rows"]:
        lines.append(
            f"| {r['point']} | {r['measure']} | {_unit(r['measure'], r['measured'])} | "
            f"{_unit(r['measure'], r['predicted'])} | {r['error']:+.1%} | {r['target']:.0%} |"
        )
    return "\n".join(lines)


def main(out: str) -> int:
    results = {"scale": scale(), "knee": knee(), "accuracy": accuracy()}
    print(table(results))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0
