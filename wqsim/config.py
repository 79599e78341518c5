"""Configuration as small frozen dataclasses, validated when built.

They are built at the edge (the CLI, a notebook's setup cell, a test fixture)
and passed down explicitly. Vary one setting with ``dataclasses.replace``.
Every error names the field and the value it got.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from .retention import Retention


def default_workers() -> int:
    """The seed's pool size: one worker per core but one, and at least one."""
    return max((os.cpu_count() or 1) - 1, 1)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The one set of numeric rules, shared by the dataclasses below, the CLI's argparse
# converters (wqsim.arguments) and every function that takes a count, a duration or a
# probability, so a setting is held to the same rule, in the same words, wherever it is given.
# Each names the field and the value it got; NaN fails every comparison, so it fails each rule.
def check_positive(name: str, value: float) -> float:
    """A positive, finite number (a duration, an interval, a factor)."""
    if not _is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number (got {value!r})")
    return value


def check_non_negative(name: str, value: float) -> float:
    """A finite number >= 0 (a duration that may be zero)."""
    if not _is_number(value) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a finite number >= 0 (got {value!r})")
    return value


def check_int(name: str, value: int) -> int:
    """An integer, and not a bool (True is an int to Python, never a count or a seed to us)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer (got {value!r})")
    return value


def check_int_at_least(name: str, value: int, low: int) -> int:
    """An integer >= ``low`` (a count: 1 for tasks and workers, 0 where none is allowed)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low} (got {value!r})")
    return value


def check_time_limit(name: str, value: float) -> float:
    """A task time limit: a positive, finite number of seconds."""
    if not _is_number(value) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive, finite number of seconds (got {value!r})")
    return value


def check_probability(name: str, value: float) -> float:
    if not _is_number(value) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability between 0 and 1 (got {value!r})")
    return value


# claim.lua hands a worker at most this many prerequisites of one task (one more when
# there are more, so the worker can tell): the most a Limits.max_dependencies may allow.
MAX_DEPENDENCIES_HANDED_OVER = 100_000


@dataclass(frozen=True)
class Limits:
    """Bounds on what a worker reads from Redis, where anyone with write access can put anything.

    A task over a limit is dead-lettered with a reason naming the limit; the
    worker carries on. The limits keep decoding bounded in time, memory and
    stack (no recursion without bound, no quadratic int conversion).
    max_payload_bytes: a payload, or a prerequisite's or task's stored result, in bytes (UTF-8).
    max_depth: JSON nesting depth of those texts (checked before parsing, without recursion).
    max_int_digits: digits of one JSON integer (Python refuses more than 4300 anyway).
    max_dependencies: prerequisites of one task, whose results are handed to its handler.
    max_package_size: tasks in one claimed work package.
    """

    max_payload_bytes: int = 1_048_576
    max_depth: int = 64
    max_int_digits: int = 1000
    max_dependencies: int = 100_000
    max_package_size: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_payload_bytes", "max_depth", "max_int_digits", "max_dependencies", "max_package_size"):
            check_int_at_least(name, getattr(self, name), 1)
        if self.max_depth > 500:  # well inside the interpreter's recursion limit, whatever parses it
            raise ValueError(f"max_depth must be at most 500 (got {self.max_depth!r})")
        ceiling = sys.get_int_max_str_digits() or 4300
        if self.max_int_digits > ceiling:
            raise ValueError(
                f"max_int_digits must be at most {ceiling}, Python's own limit (got {self.max_int_digits!r})"
            )
        if self.max_dependencies > MAX_DEPENDENCIES_HANDED_OVER:
            raise ValueError(
                f"max_dependencies must be at most {MAX_DEPENDENCIES_HANDED_OVER:,}, what claim.lua "
                f"hands over (got {self.max_dependencies!r})"
            )


@dataclass(frozen=True)
class WorkerConfig:
    """How one worker takes and settles tasks.

    lease_s: how long a claim stays valid without a heartbeat; a worker that
        dies holding a task loses it after this long, and the reaper returns it.
    backoff_s, backoff_max_s: a failed attempt is retried after
        backoff_s * 2**(attempt - 1) seconds, capped at backoff_max_s.
    idle_wait_s: longest single wait for a wake-up signal while idle. It is a
        safety net; workers are woken by signals, not by polling.
    batch_size: tasks claimed per round trip, all under one lease.
    prefetch: requests kept in flight: results and the request for more go
        to Redis together while the worker runs a claim it holds in reserve,
        so round trips overlap with work. 0 turns it off; each step deeper
        holds one more batch (Celery's prefetch multiplier, which defaults to 4).
        A claim made ahead has an ordinary lease: the heartbeat renews it
        before its reply is read (Redis finds it by the worker's id), so a
        worker that dies holding it loses it after lease_s like any other.
    prefetch_below_s: tasks shorter than this (on the last claim) are always
        prefetched. Longer ones are prefetched only while the ready backlog
        outnumbers the claims in flight: tasks held in reserve are tasks an idle
        worker cannot start, so near the end of a run, or in a task graph whose
        ready list is short, a worker claims only when it is free (Celery's
        -Ofair), which keeps makespans near their bound.
    heartbeat: renew the lease from a background thread while tasks run
        ("pings"), so long work is not reaped; every ping_interval_s seconds
        (default lease_s / 3).
    flush_interval_s: within a batch or package, completed tasks are recorded
        at most this long after they finish (batched into one round trip), so a
        worker that dies mid-package loses only its unfinished tasks.
    exit_when_drained: stop (and publish "finished") once every task of the
        queue is terminal; False keeps the worker serving, as a daemon would.
    reconnect_s: how long to keep reconnecting to an unreachable Redis before giving up.
    task_timeout_s: the default time limit of one attempt (arq's job_timeout, RQ's
        job_timeout, Celery's time_limit); a kind registered with its own limit,
        or a task with ``timeout_s``, overrides it; None means no limit. A task
        over its limit is recorded as a failed attempt whose error names the
        limit, then retried or dead-lettered as usual; heartbeats never extend it.
        In process mode the worker process is then stopped and replaced (a
        Python thread cannot be interrupted safely). In thread mode the attempt
        is recorded as failed on time, but the thread stays busy until the
        handler returns, and what it returns is ignored.
    limits: bounds on what is read from Redis (see Limits).
    """

    lease_s: float = 30.0
    backoff_s: float = 0.05
    backoff_max_s: float = 5.0
    idle_wait_s: float = 1.0
    batch_size: int = 1
    prefetch: int = 2
    prefetch_below_s: float = 0.002
    heartbeat: bool = True
    ping_interval_s: float | None = None
    flush_interval_s: float = 0.01
    exit_when_drained: bool = True
    reconnect_s: float = 60.0
    task_timeout_s: float | None = 300.0
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if not isinstance(self.limits, Limits):
            raise ValueError(f"limits must be a wqsim.config.Limits (got {self.limits!r})")
        for name in (
            "lease_s",
            "backoff_s",
            "backoff_max_s",
            "idle_wait_s",
            "reconnect_s",
            "flush_interval_s",
            "prefetch_below_s",
        ):
            check_positive(name, getattr(self, name))
        check_int_at_least("batch_size", self.batch_size, 1)
        check_int_at_least("prefetch", self.prefetch, 0)
        if self.task_timeout_s is not None:
            check_time_limit("task_timeout_s", self.task_timeout_s)
        if self.lease_s < 0.01:
            raise ValueError(f"lease_s must be at least 0.01 s (got {self.lease_s!r})")
        if self.ping_interval_s is not None:
            check_positive("ping_interval_s", self.ping_interval_s)
            if not self.lease_s > self.ping_interval_s:
                raise ValueError(
                    f"lease_s must be longer than ping_interval_s (got {self.lease_s!r} <= {self.ping_interval_s!r})"
                )

    @property
    def ping_every_s(self) -> float:
        return self.ping_interval_s if self.ping_interval_s is not None else self.lease_s / 3

    @property
    def lease_ms(self) -> int:
        return max(int(self.lease_s * 1000), 1)

    def backoff_for(self, attempt: int) -> float:
        return min(
            self.backoff_s * 2.0 ** min(max(attempt - 1, 0), 64), self.backoff_max_s
        )  # attempt may be hand-written


@dataclass(frozen=True)
class ChaosConfig:
    """Failure injection for the simulation, reproducible from ``seed``.

    Each draw depends only on (seed, task id, attempt), so a run's faults do not
    depend on which worker happens to take which task.
    fail_p: the handler raises (the task is retried with backoff).
    hang_p: the whole worker, heartbeat included, stalls for hang_s, then tries
        to complete. With hang_s longer than the lease, the reaper has returned
        the task by then, so that late completion is rejected.
    crash_p: the worker process dies with os._exit mid-task (in thread mode the
        worker abandons the task instead), leaving its lease to expire.
    straggler_p: the task runs straggler_factor times longer.
    """

    seed: int = 0
    fail_p: float = 0.0
    hang_p: float = 0.0
    crash_p: float = 0.0
    straggler_p: float = 0.0
    straggler_factor: float = 10.0
    hang_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("fail_p", "hang_p", "crash_p", "straggler_p"):
            check_probability(name, getattr(self, name))
        check_positive("straggler_factor", self.straggler_factor)
        check_positive("hang_s", self.hang_s)
        check_int("seed", self.seed)

    @property
    def active(self) -> bool:
        return any((self.fail_p, self.hang_p, self.crash_p, self.straggler_p))


@dataclass(frozen=True)
class RunConfig:
    """The seed's scenario: generate tasks, run a pool of workers, listen, audit.

    package_size: bundle tasks into work packages of this many at creation.
    graph: run an example graph instead (chain, fanout, diamond, layered; see
        wqsim.graph.example) of about ``tasks`` sleep tasks; ``allow_failure``
        lets dependents of a failed task run anyway instead of being cancelled.
    timeout_s: the listener's limit; None scales it with the work to be done.
    reap_interval_s: how often the reaper runs; None means a quarter of the lease.
    retention: what the queue keeps of finished work (see wqsim.retention).
    arrival_rate: tasks per second arriving as a Poisson process (open loop: arrivals
        do not wait for completions), drawn from ``arrival_seed``; None enqueues every
        task at once, before the workers start, so waits measure a position in a backlog.
        Tasks arrive one at a time, so not with a graph or work packages.
    allow_eviction: run on a Redis whose maxmemory-policy may evict keys (losses are
        then reported, not prevented; see wqsim.storage). False refuses such a server.
    service: "fixed" gives every sleep task ``duration_ms``; "exponential" draws each
        one's duration with that mean from ``arrival_seed`` (M/M/c rather than M/D/c;
        see wqsim.generator.service_durations). Not with a graph, whose durations are its own.
    shards: split the queue into that many shards, ``<queue>:0`` ... (see wqsim.shards): on a
        Redis Cluster each is served by the master of its own slot. Not with an arrival rate
        (an open-loop producer holds one queue open) nor a simulated run.
    """

    queue: str = "seed"
    tasks: int = 100
    duration_ms: float = 10.0
    kind: str = "sleep"
    package_size: int | None = None
    workers: int = field(default_factory=default_workers)
    max_attempts: int = 3
    mode: str = "process"
    timeout_s: float | None = None
    reap_interval_s: float | None = None
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    chaos: ChaosConfig = field(default_factory=ChaosConfig)
    graph: str | None = None
    allow_failure: bool = False
    graph_seed: int = 0
    retention: Retention = field(default_factory=Retention)
    allow_eviction: bool = False
    arrival_rate: float | None = None
    arrival_seed: int = 0
    service: str = "fixed"
    shards: int = 1

    def __post_init__(self) -> None:
        from .graph import GRAPHS
        from .keys import SHARD_NAME, Keys

        if self.graph is not None and self.graph not in GRAPHS:
            raise ValueError(f"graph must be one of {', '.join(GRAPHS)} (got {self.graph!r})")
        if self.graph is not None and self.package_size is not None:
            raise ValueError("a graph cannot be bundled into work packages (drop package_size)")

        Keys(self.queue)  # validates the name
        if SHARD_NAME.match(self.queue):
            raise ValueError(
                f"queue name {self.queue!r} is a shard's ('<queue>:<index>'): name the queue and set shards instead"
            )
        check_int_at_least("tasks", self.tasks, 1)
        check_int_at_least("workers", self.workers, 1)
        check_int_at_least("max_attempts", self.max_attempts, 1)
        if self.package_size is not None:
            check_int_at_least("package_size", self.package_size, 1)
        check_non_negative("duration_ms", self.duration_ms)
        if self.mode not in ("process", "thread"):
            raise ValueError(f"mode must be 'process' or 'thread' (got {self.mode!r})")
        if self.timeout_s is not None:
            check_positive("timeout_s", self.timeout_s)
        if self.reap_interval_s is not None:
            check_positive("reap_interval_s", self.reap_interval_s)
        check_int("arrival_seed", self.arrival_seed)
        from .shards import check_shards

        check_shards(self.shards)
        if self.shards > 1 and self.arrival_rate is not None:
            raise ValueError(
                "arrival_rate cannot be combined with shards: an open-loop producer holds one queue open "
                "(drop arrival_rate or shards)"
            )
        if self.service not in ("fixed", "exponential"):
            raise ValueError(f"service must be one of fixed, exponential (got {self.service!r})")
        if self.service != "fixed" and self.graph is not None:
            raise ValueError("service cannot be combined with a graph: its tasks have durations of their own")
        if self.arrival_rate is not None:
            check_positive("arrival_rate", self.arrival_rate)
            if self.graph is not None:
                raise ValueError(
                    "arrival_rate cannot be combined with a graph: a graph is enqueued whole and its tasks are "
                    "released by their prerequisites (drop arrival_rate or graph)"
                )
            if self.package_size is not None:
                raise ValueError(
                    "arrival_rate cannot be combined with package_size: tasks arrive one at a time, while a work "
                    "package is enqueued whole (drop arrival_rate or package_size)"
                )

    @property
    def listener_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        ideal_s = self.tasks * self.duration_ms / 1000 / (1 if self.graph else self.workers)
        if self.arrival_rate is not None:  # the last task arrives after about tasks / rate seconds
            ideal_s = max(ideal_s, self.tasks / self.arrival_rate)
        return 60.0 + 5 * ideal_s

    @property
    def reaper_interval_s(self) -> float:
        return self.reap_interval_s if self.reap_interval_s is not None else max(self.worker.lease_s / 4, 0.01)
