"""What each step of the real engine costs on one machine: the simulation's only inputs besides the config.

A profile is measured by ``wqsim.sim.calibrate`` on a live server and saved
as JSON; the one measured on the machine this package was built on ships
with it (``default_profile``). Every figure is a mean, in seconds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path

from ..config import check_int_at_least, check_non_negative

DEFAULT_PROFILE = "default_profile.json"
# Idleness after which waking is slow, ramping from nothing to the full cost: measured on the
# virtual machines these were built on, where a hand-off after a 0.5 ms sleep cost what one in a
# busy loop does, and one after 5 ms or more cost its most (see wqsim.sim.calibrate).
COLD_FROM_S = 0.0005
COLD_FULL_S = 0.005
SHORT_SLEEP_S, LONG_SLEEP_S = 0.001, 0.010  # the sleeps the overshoot is measured at


def cold(idle_s: float) -> float:
    """How cold a CPU idle for ``idle_s`` is, from 0 (busy) to 1 (long idle): a linear ramp."""
    return min(max((idle_s - COLD_FROM_S) / (COLD_FULL_S - COLD_FROM_S), 0.0), 1.0)


@dataclass(frozen=True)
class CostProfile:
    """The costs the simulation charges, each measured (see wqsim.sim.calibrate).

    Redis is one thread: a script call holds it for ``server_call_s`` plus a
    per-task cost for each task it claims, settles or enqueues, and calls wait
    their turn. A worker pays a ``round_trip_s`` per call (the network and both
    kernels, without Redis's own time) and its own CPU: ``client_call_s`` per
    call, ``client_task_s`` per task (decoding, dispatch, recording).

    Waking costs time. A sleeping task costs its worker ``sleep_overshoot_s``
    more than a 1 ms sleep and ``sleep_overshoot_long_s`` more than a 10 ms one
    (the sleep's overrun, and the worker's code running slower on a CPU that idled); the
    worker's first call after a long sleep takes ``cold_cpu_s`` more of its own
    time, and a call that finds Redis idle for long waits ``redis_wake_s``
    before it runs (the CPU, idle meanwhile, must be woken and warmed up again:
    on a virtual machine, a halted virtual CPU). "Long" ramps from
    ``COLD_FROM_S`` to ``COLD_FULL_S`` of idleness (see ``cold``). A task
    enqueued for an idle worker starts ``pickup_s`` later.

    A worker process is ready ``worker_start_s`` after it is started, which is
    also the supervisor's restart delay after a crash. The run's listener
    spends ``listener_message_s`` of CPU on each progress message (one per
    settle call). ``cores``: the CPUs the workers, Redis and the listener share
    (0: each has its own, as when workers run on many hosts).
    """

    round_trip_s: float
    server_call_s: float
    server_claim_task_s: float
    server_settle_task_s: float
    server_enqueue_task_s: float
    client_call_s: float
    client_task_s: float
    sleep_overshoot_s: float
    worker_start_s: float
    sleep_overshoot_long_s: float = 0.0
    cold_cpu_s: float = 0.0
    redis_wake_s: float = 0.0
    pickup_s: float = 0.0
    listener_message_s: float = 0.0
    cores: int = 0
    machine: str = ""  # where it was measured, in words
    measured_at: str = ""  # when (ISO 8601, UTC)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name.endswith("_s"):
                check_non_negative(f.name, getattr(self, f.name))
        check_int_at_least("cores", self.cores, 0)

    def call_s(self, claimed: int = 0, settled: int = 0, enqueued: int = 0) -> float:
        """Redis's time for one script call that claims, settles and enqueues this many tasks."""
        return (
            self.server_call_s
            + claimed * self.server_claim_task_s
            + settled * self.server_settle_task_s
            + enqueued * self.server_enqueue_task_s
        )

    def redis_capacity(self, batch_size: int) -> float:
        """Tasks per second the Redis thread can settle-and-claim at most, in batches of ``batch_size``.

        One call per batch settles the last batch and claims the next, so each
        task costs its share of a call plus its own claim and settle: past this
        rate, more workers only queue for Redis (the knee of a workers sweep).
        A worker also flushes a batch's results every ``flush_interval_s``: when a
        batch runs longer than that, it makes more calls and the ceiling is lower
        (notebook 08's first exercise measures how much).
        """
        check_int_at_least("batch_size", batch_size, 1)
        per_task = self.server_call_s / batch_size + self.server_claim_task_s + self.server_settle_task_s
        return 1.0 / per_task if per_task > 0 else float("inf")

    def overshoot_s(self, sleep_s: float) -> float:
        """How much longer than ``sleep_s`` a sleeping task costs its worker (sleep 0 does not sleep: nothing).

        Measured at a short and a long sleep (calibrate's SHORT_SLEEP_S and LONG_SLEEP_S), and
        drawn as a line between them, flat beyond.
        """
        if sleep_s <= 0:
            return 0.0
        share = min(max((sleep_s - SHORT_SLEEP_S) / (LONG_SLEEP_S - SHORT_SLEEP_S), 0.0), 1.0)
        return self.sleep_overshoot_s + share * (self.sleep_overshoot_long_s - self.sleep_overshoot_s)

    def wake_delay_s(self) -> float:
        """How long an idle worker takes to wake, beyond the claim it then makes: pickup_s less that claim."""
        claim = self.client_call_s + self.round_trip_s + self.call_s(claimed=1) + self.client_task_s
        return max(self.pickup_s - claim, 0.0)

    def without_overheads(self) -> CostProfile:
        """Every cost zero: the ideal queue of queueing theory (tasks take exactly their service time)."""
        zero: dict[str, float | int] = {f.name: 0.0 for f in fields(self) if f.name.endswith("_s")}
        return replace(self, **zero, cores=0)  # type: ignore[arg-type]  # the names are the float fields

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CostProfile:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a cost profile is a JSON object of the CostProfile fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown field(s) in the cost profile: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # a field missing
            raise ValueError(f"incomplete cost profile: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> CostProfile:
        """A profile saved by ``save`` (or ``wqsim sim --calibrate``); ValueError names what is wrong."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read cost profile {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cost profile {path} is not JSON: {exc}") from None


def default_profile() -> CostProfile:
    """The profile measured on the machine this package was built on (2 cores; see its ``machine``)."""
    return CostProfile.from_json(resources.files(__package__).joinpath(DEFAULT_PROFILE).read_text())
