"""Configuration fails early, naming the field and the value."""

import dataclasses

import pytest

from wqsim import ChaosConfig, RunConfig, WorkerConfig, default_workers


@pytest.mark.parametrize(
    ("factory", "field", "value"),
    [
        (WorkerConfig, "lease_s", 0),
        (WorkerConfig, "lease_s", -1),
        (WorkerConfig, "batch_size", 0),
        (WorkerConfig, "prefetch", -1),
        (WorkerConfig, "idle_wait_s", 0),
        (WorkerConfig, "backoff_s", -0.5),
        (RunConfig, "max_attempts", 0),
        (RunConfig, "workers", 0),
        (RunConfig, "workers", -2),
        (RunConfig, "tasks", 0),
        (RunConfig, "duration_ms", -1),
        (RunConfig, "mode", "fibers"),
        (ChaosConfig, "fail_p", 1.5),
        (ChaosConfig, "crash_p", -0.1),
    ],
)
def test_invalid_config_raises_value_error_naming_the_field(factory, field, value):
    with pytest.raises(ValueError, match=rf"^{field} must .*\(got {value!r}\)"):
        factory(**{field: value})


def test_bad_queue_name_in_run_config_is_rejected():
    with pytest.raises(ValueError, match="queue name"):
        RunConfig(queue="no spaces please")


def test_configs_are_frozen_and_varied_with_replace():
    base = WorkerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.lease_s = 1  # type: ignore[misc]
    assert dataclasses.replace(base, lease_s=2).lease_ms == 2000


def test_default_pool_is_cores_minus_one_but_at_least_one(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_workers() == 1
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_workers() == 7


def test_backoff_doubles_per_attempt_up_to_the_cap():
    cfg = WorkerConfig(backoff_s=0.1, backoff_max_s=0.5)
    assert [cfg.backoff_for(a) for a in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]


def _refusals(fake_client):
    """Every function that takes a number, beside the rule it is held to."""
    from wqsim import Queue, Reaper, arrivals, bounds, chain, layered
    from wqsim.graph import example
    from wqsim.metrics import LengthSampler, erlang_c

    q = Queue(fake_client, "validators")
    return [
        (lambda: Reaper(q, interval_s=0), "interval_s must be a positive, finite number (got 0)"),
        (lambda: LengthSampler(q, every_s=float("nan")), "every_s must be a positive, finite number (got nan)"),
        (lambda: arrivals(q, 1, rate_per_s=float("inf")), "rate_per_s must be a positive, finite number (got inf)"),
        (lambda: arrivals(q, True, rate_per_s=1.0), "count must be an integer >= 1 (got True)"),
        (lambda: chain(0), "length must be an integer >= 1 (got 0)"),
        (lambda: layered(edge_p=2), "edge_p must be a probability between 0 and 1 (got 2)"),
        (lambda: bounds(chain(2), workers=0), "workers must be an integer >= 1 (got 0)"),
        (lambda: example("chain", tasks=1.5), "tasks must be an integer >= 1 (got 1.5)"),  # type: ignore[arg-type]
        (lambda: erlang_c(1.0, 2.0, servers=0), "servers must be an integer >= 1 (got 0)"),
        (lambda: ChaosConfig(seed=True), "seed must be an integer (got True)"),
    ]


def test_every_number_is_refused_by_the_one_set_of_rules_in_the_same_words(fake_client):
    for call, message in _refusals(fake_client):
        with pytest.raises(ValueError) as caught:
            call()
        assert str(caught.value) == message
