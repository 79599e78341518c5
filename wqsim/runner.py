"""The seed's scenario in one call: listen, generate, work, reap, audit.

Order matters and differs from the Go original on purpose: the listener
subscribes *before* any worker starts, so no ``finished`` message can be
published while nobody is listening.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .acl import PermissionDenied
from .audit import Audit, audit
from .config import RunConfig
from .connection import connect, redact, resolve_url
from .generator import ArrivalThread, generate, generate_graph
from .graph import Bounds
from .graph import bounds as graph_bounds
from .listener import Listener, Listeners, ListenResult, ProgressCallback
from .pool import WorkerPool
from .queue import Queue
from .reaper import Reaper
from .shards import ShardedQueue
from .storage import check_each_server

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("wqsim.run")


@dataclass(frozen=True)
class RunReport:
    config: RunConfig
    audit: Audit
    listen: ListenResult
    wall_s: float  # from the first worker's start to the last finished message
    restarts: int  # worker processes replaced after dying
    reaped: int  # tasks the reaper returned to the queue
    makespan_s: float = 0.0  # first start to last finish: wqsim.metrics.makespan of the run's attempts
    bounds: Bounds | None = None  # for a graph: the critical path and work/workers
    heartbeats: int = 0  # heartbeat calls that reached Redis, every worker process's (the stats hash counts them)
    renewed: int = 0  # leases those heartbeats renewed
    # The run's attempts, read from Redis as the run ended: see attempts().
    attempts_frame: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def tasks_per_s(self) -> float:
        """Wall-clock throughput: tasks done / wall_s.

        wall_s runs from the moment the workers are started to the last worker's
        finished message, so it includes starting the worker processes, their
        first claims and their exit: what someone waiting for the run sees. It
        is lower than ``makespan_tasks_per_s``, and the more so the shorter the run.
        """
        return self.audit.done / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def makespan_tasks_per_s(self) -> float:
        """Busy throughput: tasks done / makespan_s (first handler start to last finish, from
        Redis's records); the same as ``wqsim.metrics.throughput(report.attempts())``.

        It leaves out the start-up and shut-down that ``tasks_per_s`` includes, so it
        is the rate the pool sustains once running, and the one to compare with a
        model (workers / service time). With an arrival rate, both are bounded by it.
        Counted over the tasks whose records the run kept: past the retention policy's
        ``keep_done``, the oldest done tasks' hashes are retired, and with them their times.
        """
        if self.attempts_frame is not None:
            from .metrics import throughput

            return throughput(self.attempts_frame)
        return self.audit.done / self.makespan_s if self.makespan_s > 0 else 0.0

    def attempts(self) -> pd.DataFrame:
        """The run's attempts DataFrame (``wqsim.metrics.attempts`` of its queue), one row per attempt.

        Read from Redis once, as ``run`` ended, and kept: the queue may be purged
        by the next run, or its embedded Redis gone, by the time this is called.
        A copy is returned, so the report's own stays as read.
        """
        if self.attempts_frame is None:
            raise ValueError("this report was made without its attempts (see wqsim.run)")
        return self.attempts_frame.copy()

    @property
    def ok(self) -> bool:
        """Every worker finished and the audit is clean (dead-lettered tasks are allowed)."""
        return self.audit.clean and not self.listen.timed_out

    def summary(self) -> str:
        return summary_line(self.audit, self.wall_s, self.tasks_per_s)

    def makespan_summary(self) -> str:
        """Measured makespan beside its lower bounds (a graph's critical path, work/workers)."""
        return makespan_line(self.makespan_s, self.bounds)


def summary_line(audit: Audit, wall_s: float, tasks_per_s: float, label: str = "Summary") -> str:
    """The run's one-line summary; a simulated run says so in ``label`` (see wqsim.sim)."""
    a = audit
    cancelled = f"{a.cancelled} cancelled, " if a.cancelled else ""
    return (
        f"{label}: {a.done} done, {a.dead} dead, {cancelled}{a.lost} lost, {a.completed_twice} completed twice, "
        f"{a.executions} executions; {wall_s:.2f} s wall, {tasks_per_s:,.0f} tasks/s"
    )


def makespan_line(makespan_s: float, bounds: Bounds | None, label: str = "Makespan") -> str:
    """A makespan beside its lower bounds (a graph's critical path, work/workers)."""
    if bounds is None:
        return f"{label} {makespan_s:.3f} s"
    b = bounds
    ratio = f"; makespan / bound = {makespan_s / b.lower_bound_s:.2f}" if b.lower_bound_s > 0 else ""
    return (
        f"{label} {makespan_s:.3f} s; bounds: critical path {b.critical_path_s:.3f} s "
        f"({len(b.critical_path)} tasks), work/workers {b.per_worker_s:.3f} s{ratio}"
    )


def run(
    config: RunConfig | None = None,
    url: str | None = None,
    logger: logging.Logger | None = None,
    on_progress: ProgressCallback | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> RunReport:
    """Run the seed scenario on ``config.queue`` (purged first) and audit the result.

    ``progress`` shows a tqdm bar (a widget in Jupyter) fed by the completion
    events the listener receives; ``on_progress`` is called with each one too.
    ``should_stop`` is asked at least every quarter second; once it says True
    the workers are stopped gracefully (the CLI passes its SIGTERM request).
    The run rides out a Redis restart: workers, listener and reaper reconnect.
    A Redis that may evict keys is refused (EvictionRisk) unless
    ``config.allow_eviction``; the queue gets ``config.retention`` as its policy; the
    audit is told how many tasks were created, so tasks that vanish count as lost.
    With ``config.arrival_rate`` the tasks arrive one by one while the workers run
    (an open loop: see ArrivalThread); otherwise they are all enqueued first.
    The report keeps the run's attempts (``report.attempts()``) and the heartbeats
    counted in Redis.
    """
    cfg = config or RunConfig()
    logger = logger or log
    url = resolve_url(url)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.tasks if not cfg.graph else None, unit="task", desc=f"queue {cfg.queue}")
        inner = on_progress

        def on_progress(status: str, task_id: str) -> None:
            bar.update(1)
            if inner:
                inner(status, task_id)

    sharded = ShardedQueue.connect(url, cfg.queue, cfg.shards)
    queue: Queue | ShardedQueue = sharded if cfg.shards > 1 else sharded.queues[0]
    check_each_server((shard.client for shard in sharded), f"Redis at {redact(url)}", cfg.allow_eviction, logger)
    if (uneven := sharded.placement_warning()) is not None:
        logger.warning("%s", uneven)
    for shard in sharded:
        shard.purge()
        shard.set_retention(cfg.retention)
    logger.info(
        "Work server: %d %s tasks on queue %r at %s, %d worker%s",
        cfg.tasks,
        cfg.kind,
        cfg.queue,
        redact(url),
        cfg.workers,
        "" if cfg.workers == 1 else "s",
    )
    worker_ids = [str(i) for i in range(1, cfg.workers + 1)]
    listener = Listeners(
        [
            Listener(
                connect(url, queue=shard.name),
                shard.name,
                worker_ids,
                logger=logger,
                on_progress=on_progress,
                reconnect_s=cfg.worker.reconnect_s,
            )
            for shard in sharded
        ]
    ).start()
    bounds = None
    producer: ArrivalThread | None = None
    created = 0
    if cfg.graph:
        tasks = generate_graph(
            queue,
            cfg.graph,
            cfg.tasks,
            cfg.duration_ms,
            cfg.graph_seed,
            cfg.max_attempts,
            allow_failure=cfg.allow_failure,
        )
        created = len(tasks)
        bounds = graph_bounds(tasks, cfg.workers)
        if bar is not None:
            bar.total = len(tasks)
        logger.info(
            "Created a %s graph of %d tasks, critical path %d tasks", cfg.graph, len(tasks), len(bounds.critical_path)
        )
    elif cfg.arrival_rate is not None:
        # Open loop: tasks arrive while the workers run (see ArrivalThread), after they start.
        producer = ArrivalThread(
            Queue(connect(url, queue=cfg.queue), cfg.queue),
            cfg.tasks,
            cfg.arrival_rate,
            cfg.duration_ms,
            cfg.arrival_seed,
            cfg.kind,
            cfg.max_attempts,
            cfg.service,
        ).hold()
        logger.info("Tasks arrive at %g per second (Poisson, seed %d)", cfg.arrival_rate, cfg.arrival_seed)
    else:
        created = len(
            generate(
                queue,
                cfg.tasks,
                cfg.duration_ms,
                cfg.kind,
                cfg.max_attempts,
                cfg.package_size,
                logger=logger,
                service=cfg.service,
                service_seed=cfg.arrival_seed,
            )
        )
    reapers = [
        Reaper(Queue(connect(url, queue=shard.name), shard.name), cfg.reaper_interval_s).start() for shard in sharded
    ]
    pool = WorkerPool(url, cfg.queue, worker_ids, cfg.worker, cfg.chaos, cfg.mode, shards=cfg.shards)
    started = time.perf_counter()
    try:
        pool.start()
        if producer is not None:
            # Arrivals begin once every worker waits for work: their waits are queueing, not start-up.
            pool.wait_ready(cfg.listener_timeout_s)
            producer.start()

        def stopping() -> bool:
            # A worker refused a permission stops the pool (see pool.py), failed arrivals the run:
            # then stop listening too.
            failed = pool.refused is not None or (producer is not None and producer.failed)
            return failed or (should_stop is not None and should_stop())

        listened = listener.wait(cfg.listener_timeout_s, should_stop=stopping)
        wall_s = time.perf_counter() - started
        if listened.timed_out or listened.stopped:
            pool.stop()
        if not pool.join(30.0):
            logger.error("Workers did not exit within 30 s of the end; killing them")
            pool.terminate()
    except BaseException:
        pool.stop()
        if not pool.join(10.0):
            pool.terminate()
        raise
    finally:
        if producer is not None:
            producer.stop()  # a no-op once every task has arrived
            producer.join(10.0)
        listener.close()
        for reaper in reapers:
            reaper.stop()
        if bar is not None:
            bar.close()
    if pool.refused is not None:
        raise PermissionDenied(pool.refused)
    if producer is not None:
        if producer.error is not None:
            raise producer.error
        created = len(producer.enqueued)
    # What this run created counts, even if Redis forgot it; a sharded queue's shards are each audited
    # in one atomic read, and a loss on any of them is the run's.
    result = queue.audit(expected=created).total if isinstance(queue, ShardedQueue) else audit(queue, expected=created)
    frame = _attempts(queue)
    counters = queue.counters()
    report = RunReport(
        cfg,
        result,
        listened,
        wall_s,
        pool.restarts,
        sum(reaper.returned for reaper in reapers),
        _makespan(frame),
        bounds,
        heartbeats=counters.get("heartbeats", 0),
        renewed=counters.get("renewed", 0),
        attempts_frame=frame,
    )
    logger.info(report.summary())
    if bounds is not None:
        logger.info(report.makespan_summary())
    if listened.stopped:
        logger.warning("Run stopped early: %d task(s) not finished; %s", result.in_flight, result.summary())
    elif not result.clean:
        logger.error("Audit is not clean: %s", result.summary())
    return report


def _attempts(queue: Queue | ShardedQueue) -> pd.DataFrame:
    """The run's attempts, as wqsim.metrics reads them from the queue's records.

    metrics (and pandas with it) is imported here, once the run is over, so the
    CLI and the worker processes it forks start without it.
    """
    from . import metrics

    return queue.attempts() if isinstance(queue, ShardedQueue) else metrics.attempts(queue)


def _makespan(frame: pd.DataFrame) -> float:
    """The run's makespan, as wqsim.metrics defines it."""
    from . import metrics

    return metrics.makespan(frame)
