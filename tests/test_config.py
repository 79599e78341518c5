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
