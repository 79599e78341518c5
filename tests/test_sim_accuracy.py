"""The simulation against the real engine, on this machine: calibrate, then every grid point both ways.

The grid (wqsim.sim.accuracy.grid): workers 1-3, batch 1, 10 and 100, sleep 1 and
10 ms; Poisson arrivals at utilisation 0.5 and 0.8; chaos off and on. Each point
fails at twice its target (the targets of wqsim.sim.accuracy.TARGETS): the host is
shared. The profile is measured once, on the same redis-server, just before, and
``make test`` runs this module by itself after the rest (the ``alone`` mark): a
real run of half a second beside three other test processes times them too.
"""

from __future__ import annotations

import pytest

from wqsim.sim import CostProfile, calibrate
from wqsim.sim.accuracy import TARGETS, Point, compare, grid, with_queue

pytestmark = [pytest.mark.real_redis, pytest.mark.slow, pytest.mark.alone]

# No-op throughput is judged by the benchmark (python -m benchmarks --sim), not here: on this shared
# 2-core host the real engine's own no-op rate moved by a factor of two between identical runs minutes
# apart, so no test of it could both pass reliably and mean something. Sleep workloads, waits and
# re-executions are held to twice their targets here; the README's table shows every point.
POINTS = [p for p in grid() if p.judged_on != ("throughput",)]


@pytest.fixture(scope="module")
def profile(redis_url: str) -> CostProfile:
    return calibrate(redis_url)


@pytest.mark.parametrize("point", POINTS, ids=[p.name for p in POINTS])
def test_the_simulation_predicts_the_real_run_within_twice_its_target(
    point: Point, profile: CostProfile, redis_url: str, queue_name: str
) -> None:
    comparison = compare(with_queue(point, queue_name), profile, redis_url)
    misses = {
        what: f"measured {comparison.measured[what]:.5g}, predicted {comparison.predicted[what]:.5g} "
        f"({comparison.error(what):+.1%}, limit {2 * TARGETS[what]:.0%})"
        for what in point.judged_on
        if abs(comparison.error(what)) > 2 * TARGETS[what]
    }
    assert misses == {}
