"""The simulation: the engine's own policies in virtual time, calibrated on a real server.

``simulate(config)`` runs a ``RunConfig`` (with its ``WorkerConfig`` and
``ChaosConfig``) through a discrete-event model of the engine (SimPy) and
returns a ``SimReport``: the same attempts DataFrame, metrics and Summary line
as ``wqsim.run``, marked as simulated. Costs come from a ``CostProfile``:
``calibrate(url)`` measures one on a live server; ``default_profile()`` is the
one measured on the machine the package was built on.

Use it for what a real run cannot ask on one machine: a thousand workers, a
million tasks, a crash a minute, Redis near saturation. ``tests/test_sim_accuracy.py``
checks it against the real engine on the same machine. ``wqsim.sim.cluster``
calibrates each master of a Redis Cluster and predicts clusters of many masters.
"""

from __future__ import annotations

from ..config import RunConfig
from ..graph import bounds as graph_bounds
from ..graph import example
from .calibrate import calibrate
from .profile import CostProfile, default_profile
from .report import SimReport

__all__ = ["CostProfile", "SimReport", "calibrate", "default_profile", "simulate"]


def simulate(
    config: RunConfig | None = None,
    profile: CostProfile | None = None,
    cores: int | None = None,
    until_s: float | None = None,
) -> SimReport:
    """Run ``config`` in virtual time with the costs of ``profile`` (default: ``default_profile()``).

    cores: CPUs the workers and Redis share; None takes the profile's (the
        machine it was measured on), 0 gives every worker a core of its own
        (workers spread over many hosts).
    until_s: stop after this much virtual time (default: the run's listener
        timeout, as a real run would); the report then says ``finished`` False.
    """
    from .model import Model
    from .report import report

    cfg = config or RunConfig()
    if cfg.shards > 1:
        raise ValueError("the simulation models one queue on one Redis thread: drop shards (--shards)")
    model = Model(cfg, profile or default_profile(), cores)
    finished = model.run(until_s if until_s is not None else cfg.timeout_s)
    bounds = (
        graph_bounds(example(cfg.graph, cfg.tasks, cfg.duration_ms, cfg.graph_seed), cfg.workers) if cfg.graph else None
    )
    return report(model, finished, bounds)
