"""A run as numbers: one DataFrame row per task attempt, and the summaries built from it.

Everything is read from Redis's durable records (task hashes and the event
stream), never from worker logs, so a crashed worker's attempt still shows.
Times are epoch seconds; the summaries give seconds and tasks per second.
Beside the measurements sit the queueing-theory predictions they are checked
against: Little's law, the makespan bounds and the Erlang C formula.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .config import check_int_at_least, check_positive
from .keys import worker_of
from .queue import Queue

COLUMNS = [
    "queue",
    "task_id",
    "kind",
    "package",
    "attempt",
    "worker",
    "enqueued_at",
    "started_at",
    "finished_at",
    "status",
    "error",
]
_HASH_FIELDS = ("kind", "package", "attempt", "lease", "enqueued_at", "started_at", "finished_at", "status", "error")


def attempts(queue: Queue) -> pd.DataFrame:
    """One row per attempt of every task of ``queue``.

    The task hash gives each task's latest attempt (status done, dead, cancelled,
    or still queued/running/waiting); the event stream adds the earlier ones that
    failed (status ``retry``) and those whose lease expired on a crashed or hung
    worker (status ``expired``: ``started_at`` unknown, ``finished_at`` is when the
    reaper returned the task). ``enqueued_at`` is when the task first became ready.
    """
    tasks: dict[str, dict[str, str | None]] = {}
    for key, values in queue.iter_task_hashes(_HASH_FIELDS):
        tasks[queue.keys.task_id_of(key)] = dict(zip(_HASH_FIELDS, values, strict=False))
    rows: list[dict[str, object]] = []
    for task_id, h in tasks.items():
        rows.append(
            {
                "task_id": task_id,
                "kind": h["kind"],
                "package": h["package"] or "",
                "attempt": int(h["attempt"] or 0),
                "worker": worker_of(h["lease"] or ""),
                "enqueued_at": h["enqueued_at"],
                "started_at": h["started_at"],
                "finished_at": h["finished_at"],
                "status": h["status"] or "queued",
                "error": h["error"] or "",
            }
        )
    for event in queue.events():
        if event["event"] not in ("retry", "expired"):
            continue
        h = tasks.get(event["id"], {})
        rows.append(
            {
                "task_id": event["id"],
                "kind": h.get("kind"),
                "package": h.get("package") or "",
                "attempt": int(event.get("attempt") or 0),
                "worker": event.get("worker", ""),
                "enqueued_at": h.get("enqueued_at"),
                "started_at": event.get("started") or None,
                "finished_at": event["at"],
                "status": event["event"],
                "error": event.get("detail", ""),
            }
        )
    return frame(rows, queue.name)


def frame(rows: Iterable[dict[str, object]], queue: str = "") -> pd.DataFrame:
    """Rows (dicts with the COLUMNS, times as numbers or numeric strings) as a typed attempts DataFrame."""
    df = pd.DataFrame(list(rows), columns=COLUMNS)
    df["queue"] = df["queue"].astype(object).where(df["queue"].notna(), queue)
    for col in ("enqueued_at", "started_at", "finished_at"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["attempt"] = df["attempt"].fillna(0).astype(int)
    return df.sort_values(["started_at", "finished_at", "task_id"], na_position="last").reset_index(drop=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """The attempts that completed their task."""
    return df[df["status"] == "done"]


def makespan(df: pd.DataFrame) -> float:
    """Seconds from the first attempt's start to the last attempt's finish (0 if none ran).

    The one definition of a run's makespan: RunReport.makespan_s is this, too.
    """
    ran = df.dropna(subset=["started_at", "finished_at"])
    return float(ran["finished_at"].max() - ran["started_at"].min()) if len(ran) else 0.0


def throughput(df: pd.DataFrame) -> float:
    """Completed tasks per second over the makespan (first start to last finish).

    RunReport.makespan_tasks_per_s is this; RunReport.tasks_per_s divides by the
    run's wall time instead, which adds starting and stopping the workers, so it
    is lower, by more for shorter runs.
    """
    span = makespan(df)
    return len(completed(df)) / span if span > 0 else 0.0


def throughput_over_time(df: pd.DataFrame, bin_s: float = 0.1) -> pd.Series:
    """Completions per second in bins of ``bin_s``, indexed by each bin's start in seconds since the first start.

    The rates of ``throughput_bins``: the last bin's is over the time it covers, so the
    series does not dip at the end of a run that stops between bin edges.
    """
    table = throughput_bins(df, bin_s)
    return pd.Series(table["tasks_per_s"].to_numpy(), index=table["start"].to_numpy(), name="tasks/s", dtype=float)


def latencies(df: pd.DataFrame) -> pd.DataFrame:
    """Per completed task: queue wait (enqueued -> started), service (started -> finished)
    and end-to-end (enqueued -> finished) time, in seconds."""
    done = completed(df)
    return pd.DataFrame(
        {
            "wait": done["started_at"] - done["enqueued_at"],
            "service": done["finished_at"] - done["started_at"],
            "end_to_end": done["finished_at"] - done["enqueued_at"],
        }
    ).reset_index(drop=True)


def latency_percentiles(df: pd.DataFrame, percentiles: tuple[float, ...] = (50, 95, 99)) -> pd.DataFrame:
    """p50/p95/p99 (by default) of wait, service and end-to-end time, in seconds; one row each."""
    lat = latencies(df)
    table = {f"p{p:g}": lat.quantile(p / 100) for p in percentiles}
    return pd.DataFrame(table)


def utilisation(df: pd.DataFrame) -> pd.Series:
    """Per worker: the share of the makespan spent inside handlers (0..1)."""
    ran = df.dropna(subset=["started_at", "finished_at"])
    span = makespan(df)
    if span <= 0:
        return pd.Series(dtype=float, name="utilisation")
    busy = (ran["finished_at"] - ran["started_at"]).groupby(ran["worker"]).sum()
    return (busy / span).rename("utilisation")


def handoff_gaps(df: pd.DataFrame) -> pd.Series:
    """Per worker, the time from finishing one attempt to starting the next, in seconds, counted
    only where the next task was already waiting (enqueued before that finish).

    While tasks wait, a worker is never idle by choice: each such gap is the
    hand-off, the round trip to settle one task and claim the next, time a
    worker spends on every task besides the handler itself.
    """
    ran = df.dropna(subset=["started_at", "finished_at"]).sort_values("started_at")
    gaps: list[float] = []
    for _, rows in ran.groupby("worker"):
        finished = rows["finished_at"].to_numpy()[:-1]
        started = rows["started_at"].to_numpy()[1:]
        waiting = rows["enqueued_at"].to_numpy()[1:] <= finished
        gaps.extend((started - finished)[waiting & (started >= finished)].tolist())
    return pd.Series(gaps, dtype=float, name="handoff")


def effective_service_time(df: pd.DataFrame) -> float:
    """What one task costs a worker, in seconds: its mean handler time plus the median hand-off
    (``handoff_gaps``; the median, so that a rare stall of the host does not count as the rule).

    Queueing models take one service time per task; a real worker is busy for
    this long, not just for the handler's. Near saturation the difference
    matters far more than its size suggests: waits grow like 1 / (1 - utilisation).
    """
    done = completed(df).dropna(subset=["started_at", "finished_at"])
    if done.empty:
        raise ValueError("no completed attempts to fit a service time to")
    service = float((done["finished_at"] - done["started_at"]).mean())
    gaps = handoff_gaps(df)
    return service + (float(gaps.median()) if len(gaps) else 0.0)


def ideal_makespan(df: pd.DataFrame, workers: int) -> float:
    """The work/workers lower bound: total service time of the completed attempts over ``workers``."""
    done = completed(df)
    return float((done["finished_at"] - done["started_at"]).sum()) / workers


def executions(df: pd.DataFrame) -> dict[str, int]:
    """Attempts started (retries and expired ones included) against tasks completed."""
    return {"executions": int(df["attempt"].groupby(df["task_id"]).max().sum()), "completions": len(completed(df))}


def queue_length(df: pd.DataFrame) -> pd.Series:
    """Tasks ready but not yet started, over time: a step function indexed by seconds since the first enqueue.

    Each task counts from when it became ready to its first known start (a
    retried task is not counted again while it waits for its retry).
    """
    per_task = df.groupby("task_id").agg(enqueued_at=("enqueued_at", "min"), started_at=("started_at", "min"))
    changes = pd.concat(
        [
            pd.Series(1, index=per_task["enqueued_at"].dropna().to_numpy()),
            pd.Series(-1, index=per_task["started_at"].dropna().to_numpy()),
        ]
    )
    if changes.empty:
        return pd.Series(dtype=float, name="waiting")
    length = changes.groupby(level=0).sum().sort_index().cumsum()
    length.index = length.index - length.index[0]
    return length.rename("waiting")


# -- queueing theory -----------------------------------------------------------------


def erlang_c(arrival_rate: float, service_time_s: float, servers: int) -> float:
    """P(an arrival waits) in an M/M/c queue: the Erlang C formula.

    ``arrival_rate`` per second, mean ``service_time_s``, ``servers`` workers.
    Computed through the Erlang B recursion, which stays stable for hundreds
    of servers where the textbook factorials overflow.
    """
    check_positive("arrival_rate", arrival_rate)
    check_positive("service_time_s", service_time_s)
    check_int_at_least("servers", servers, 1)
    load = arrival_rate * service_time_s  # offered traffic, in Erlangs
    if load >= servers:
        return 1.0  # unstable: every arrival waits, and the queue grows without bound
    b = 1.0
    for k in range(1, servers + 1):
        b = load * b / (k + load * b)
    rho = load / servers
    return b / (1 - rho + rho * b)


def mmc_mean_wait(arrival_rate: float, service_time_s: float, servers: int) -> float:
    """Mean queue wait (seconds) in M/M/c: P(wait) / (c * mu - lambda)."""
    load = arrival_rate * service_time_s
    if load >= servers:
        return math.inf
    return erlang_c(arrival_rate, service_time_s, servers) * service_time_s / (servers - load)


def mdc_mean_wait(arrival_rate: float, service_time_s: float, servers: int) -> float:
    """Mean queue wait in M/D/c (fixed service times, as sleep tasks have), taken as half of M/M/c's.

    The factor 1/2 is exact for one server (the Pollaczek-Khinchine formula). For
    several servers it is the plain approximation, and it runs a little low: for
    10 ms tasks on two servers at 75 % utilisation it gives 6.43 ms, where a
    simulation of M/D/2 gives about 6.6 ms. Cosmetatos (1976) refines it with the
    factor 1 + (1 - rho)(c - 1)(sqrt(4 + 5c) - 2) / (16 rho c), which gives 6.55 ms
    there. The plain half is good enough to draw beside a measurement.
    """
    return mmc_mean_wait(arrival_rate, service_time_s, servers) / 2


def mdc_mean_wait_exact(arrival_rate: float, service_time_s: float, servers: int) -> float:
    """Mean queue wait in M/D/c, exactly (to ``tail``), where ``mdc_mean_wait`` approximates.

    Crommelin's observation: every task in service at time t has left by t + D,
    so the number in the system one service time later is max(N - c, 0) plus the
    Poisson(lambda D) arrivals in between, at any t. The stationary distribution
    of that chain is the time-average one; Little's law turns the mean queue into
    the mean wait. Solved on states 0..K, K far enough out that the mass beyond it is negligible.
    """
    check_positive("arrival_rate", arrival_rate)
    check_positive("service_time_s", service_time_s)
    check_int_at_least("servers", servers, 1)
    load = arrival_rate * service_time_s
    if load >= servers:
        return math.inf
    rho = load / servers
    size = int(servers + load + 40 * math.sqrt(load + 1) / (1 - rho)) + 1
    k = np.arange(size)
    arrivals = np.exp(k * math.log(load) - load - np.cumsum(np.log(np.maximum(k, 1))))  # Poisson(load) pmf
    transition = np.zeros((size, size))
    for n in range(size):
        base = max(n - servers, 0)
        transition[n, base:] = arrivals[: size - base]
    transition[:, -1] += 1 - transition.sum(axis=1)  # the truncated tail stays in the last state
    # p (P - I) = 0 with sum(p) = 1: replace one equation by the normalisation.
    system = (transition - np.eye(size)).T
    system[-1, :] = 1.0
    rhs = np.zeros(size)
    rhs[-1] = 1.0
    p = np.linalg.solve(system, rhs)
    queued = float(np.dot(np.clip(np.arange(size) - servers, 0, None), p))
    return queued / arrival_rate


def mmc_wait_cdf(t: np.ndarray | float, arrival_rate: float, service_time_s: float, servers: int) -> np.ndarray:
    """P(wait <= t) in M/M/c: 1 - C * exp(-(c * mu - lambda) * t)."""
    c = erlang_c(arrival_rate, service_time_s, servers)
    rate = servers / service_time_s - arrival_rate
    return 1 - c * np.exp(-rate * np.asarray(t, dtype=float))


class LengthSampler:
    """Samples a queue's ready and running counts every ``every_s`` seconds, in a thread.

    An observation independent of the task timestamps: Little's law compares
    the time-average of these samples (L) with the arrival rate times the mean
    time in system (lambda * W) computed from the timestamps.
    """

    def __init__(self, queue: Queue, every_s: float = 0.01) -> None:
        self.queue = queue
        self.every_s = check_positive("every_s", every_s)
        self.rows: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wqsim-length-sampler", daemon=True)

    def __enter__(self) -> LengthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            snap = self.queue.snapshot()
            self.rows.append((time.time(), len(snap["queued"]), len(snap["running"])))
            self._stop.wait(self.every_s)

    def frame(self) -> pd.DataFrame:
        """Columns at (epoch s), queued, running, in_system (queued + running)."""
        df = pd.DataFrame(self.rows, columns=["at", "queued", "running"])
        df["in_system"] = df["queued"] + df["running"]
        return df


def littles_law_sampled(df: pd.DataFrame, samples: pd.DataFrame) -> dict[str, float]:
    """Little's law, L = lambda * W, checked on a run: L observed by sampling Redis
    (LengthSampler) while tasks were in the system, against the arrival rate times the
    mean time in system from the completed tasks' timestamps. (L derived from those same
    timestamps would equal lambda * W by construction: no check at all.)"""
    done = completed(df)
    start, end = done["enqueued_at"].min(), done["finished_at"].max()
    window = samples[(samples["at"] >= start) & (samples["at"] <= end)]
    lam = len(done) / (end - start)
    W = float((done["finished_at"] - done["enqueued_at"]).mean())
    return {
        "L_sampled": float(window["in_system"].mean()),
        "arrival_rate": lam,
        "mean_time_in_system": W,
        "L_predicted": lam * W,
    }


def throughput_bins(df: pd.DataFrame, bin_s: float = 0.1) -> pd.DataFrame:
    """Completions per second in bins of ``bin_s`` from the first start, with each bin's true width.

    Columns start and end (seconds since the first start), completions and tasks_per_s.
    The run rarely ends on a bin edge, so the last bin ends at the last finish: its rate
    is its completions over the time it covers, not over a whole bin (which would show a
    slowdown that never happened). A last bin shorter than half a bin is merged into the
    one before, so a sliver's few completions do not make a spike either.
    """
    check_positive("bin_s", bin_s)
    columns = ["start", "end", "completions", "tasks_per_s"]
    done = completed(df)
    if done.empty:
        return pd.DataFrame(columns=columns, dtype=float)
    t0 = float(df["started_at"].min())
    offsets = done["finished_at"] - t0
    end = float(offsets.max())
    bins = np.floor(offsets / bin_s).astype(int)
    n = int(bins.max()) + 1
    counts = bins.value_counts().reindex(range(n), fill_value=0).sort_index().to_numpy()
    starts = np.arange(n) * bin_s
    ends = np.minimum(starts + bin_s, end)
    if n > 1 and end - starts[-1] < bin_s / 2:
        counts = np.append(counts[:-2], counts[-2] + counts[-1])
        starts, ends = starts[:-1], np.append(ends[:-2], end)
    widths = ends - starts
    rates = np.divide(counts, widths, out=np.zeros(len(counts)), where=widths > 0)
    return pd.DataFrame({"start": starts, "end": ends, "completions": counts, "tasks_per_s": rates})


FAULT_COLUMNS = ["task_id", "attempt", "worker", "at", "fault"]


def faults(queue: Queue) -> pd.DataFrame:
    """One row per fault chaos injected into an attempt (from the events stream).

    Columns task_id, attempt, worker, at (epoch s, when the fault was drawn, as
    the attempt began) and fault: crash, hang, fail or straggle. An attempt drawn
    two faults ('hang straggle') gives two rows.
    """
    rows = [
        {
            "task_id": event["id"],
            "attempt": int(event.get("attempt") or 0),
            "worker": event.get("worker", ""),
            "at": float(event["at"]),
            "fault": kind,
        }
        for event in queue.events()
        if event["event"] == "fault"
        for kind in event.get("detail", "").split()
    ]
    return pd.DataFrame(rows, columns=FAULT_COLUMNS).sort_values(["at", "task_id"]).reset_index(drop=True)
