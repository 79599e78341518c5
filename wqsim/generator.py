"""Makes example tasks and enqueues them, as the seed's work server does first:
independent sleep tasks (``generate``), arrivals spread out in time (``arrivals``),
or an example task graph (``generate_graph``)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .config import check_int_at_least, check_non_negative, check_positive
from .graph import example
from .keys import IdRange
from .queue import Queue
from .task import Task

log = logging.getLogger("wqsim.generator")


class TaskSink(Protocol):
    """Where generated tasks go: a Queue, or a ShardedQueue that routes them to its shards."""

    def reserve_ids(self, count: int) -> IdRange: ...

    def enqueue(
        self,
        tasks: Sequence[Task],
        package_size: int | None = None,
        allow_failure: bool | None = None,
        chunk: int = 5000,
    ) -> list[str]: ...


def make_tasks(
    ids: Sequence[str],
    kind: str = "sleep",
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
    timeout_s: float | None = None,
) -> list[Task]:
    """Build Task records sharing one kind, payload and time limit (enqueue stamps their times)."""
    body = dict(payload or {})
    return [Task(id=i, kind=kind, payload=body, max_attempts=max_attempts, timeout_s=timeout_s) for i in ids]


SERVICES = ("fixed", "exponential")


def service_durations(count: int, mean_ms: float, service: str = "fixed", seed: int = 0) -> list[float]:
    """Each of ``count`` sleep tasks' duration in ms: all ``mean_ms`` ("fixed"), or drawn
    exponentially with that mean ("exponential": the second M of M/M/c) from ``seed``.

    A simulated run draws the same durations from the same seed (see wqsim.sim).
    """
    check_int_at_least("count", count, 0)
    check_non_negative("mean_ms", mean_ms)
    if service not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)} (got {service!r})")
    if service == "fixed" or mean_ms == 0:
        return [mean_ms] * count
    rng = random.Random(f"{seed}:service")
    return [round(rng.expovariate(1.0 / mean_ms), 6) for _ in range(count)]


def _sleep_tasks(ids: Sequence[str], durations_ms: Sequence[float], **kwargs: Any) -> list[Task]:
    """Sleep tasks of their own durations (make_tasks gives all one payload)."""
    return [
        Task(id=i, kind="sleep", payload={"duration_ms": d}, **kwargs) for i, d in zip(ids, durations_ms, strict=True)
    ]


GENERATE_CHUNK = 25_000  # tasks made and enqueued at a time: memory stays flat whatever the count (measured:
# 60 MB peak RSS at 25,000, 123 MB at 100,000, which is also slower)


class PartialEnqueue(RuntimeError):
    """``generate`` failed after some of its chunks were written; the message says how many tasks."""

    def __init__(self, message: str, written: int) -> None:
        super().__init__(message)
        self.written = written


def generate(
    queue: TaskSink,
    count: int = 100,
    duration_ms: float = 10.0,
    kind: str = "sleep",
    max_attempts: int = 3,
    package_size: int | None = None,
    logger: logging.Logger | None = None,
    timeout_s: float | None = None,
    chunk: int = GENERATE_CHUNK,
    service: str = "fixed",
    service_seed: int = 0,
) -> IdRange:
    """Create ``count`` sleep tasks and push their ids onto the queue's ready list.

    The seed wrote hashes and pushed keys one command at a time; here tasks
    are made and enqueued ``chunk`` at a time (see Queue.enqueue), so memory
    stays flat for any count. Each chunk is atomic: all of it or none of it is
    written. A count that fits in one chunk is therefore all-or-nothing; for a
    larger one, a failure part-way leaves the chunks before it in the queue
    (complete, consistent, and counted in its ``total``), and the log line and
    the exception say how many tasks were written. With ``package_size``, tasks are
    bundled into work packages of that many tasks (the seed's Scaling
    section), each claimed as one unit under one lease; a package never spans
    two chunks. ``timeout_s`` gives every task its own time limit (see
    WorkerConfig.task_timeout_s). ``service`` "exponential" draws each sleep's
    duration around ``duration_ms`` (see service_durations). Returns the new task ids (an IdRange).
    """
    logger = logger or log
    check_int_at_least("count", count, 1)
    check_non_negative("duration_ms", duration_ms)
    check_int_at_least("chunk", chunk, 1)
    if package_size is not None:
        check_int_at_least("package_size", package_size, 1)
        chunk = max(chunk - chunk % package_size, package_size)
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    durations = service_durations(count, duration_ms, service, service_seed) if service != "fixed" else None
    ids = queue.reserve_ids(count)
    written = packages = 0
    for part in ids.chunks(chunk):
        if durations is not None and kind == "sleep":
            own = durations[written : written + len(part)]
            tasks = _sleep_tasks(part, own, max_attempts=max_attempts, timeout_s=timeout_s)
        else:
            tasks = make_tasks(part, kind=kind, payload=payload, max_attempts=max_attempts, timeout_s=timeout_s)
        try:
            packages += len(queue.enqueue(tasks, package_size=package_size))
        except Exception as exc:
            if written:
                logger.error(
                    "Created %d work items out of %d before failing (%s: %s); those %d stay queued, "
                    "the rest were not written",
                    written,
                    count,
                    type(exc).__name__,
                    exc,
                    written,
                )
                raise PartialEnqueue(
                    f"generate stopped after {written:,} of {count:,} tasks were written (in whole "
                    f"chunks of {chunk:,}): {type(exc).__name__}: {exc}",
                    written,
                ) from exc
            raise
        written += len(tasks)
        if written < count:
            logger.debug("Created %d work items out of %d so far", written, count)
    logger.info("Created %d work items out of %d", written, count)
    if packages:
        logger.info("Bundled them into %d work packages of up to %d", packages, package_size)
    return ids


def generate_graph(
    queue: TaskSink,
    name: str,
    tasks: int = 20,
    duration_ms: float = 10.0,
    seed: int = 0,
    max_attempts: int = 3,
    timeout_s: float | None = None,
    allow_failure: bool = False,
) -> list[Task]:
    """Enqueue the example graph ``name`` (see wqsim.graph.example) and return its tasks.

    The graph is written as one atomic unit (Queue.enqueue), so a dependent
    never waits on a half-written graph; ``allow_failure`` lets dependents of a
    failed task run instead of being cancelled. ``max_attempts`` and
    ``timeout_s`` apply to every task, as in ``generate``.
    """
    graph = example(name, tasks, duration_ms, seed)
    for task in graph:
        task.max_attempts = max_attempts
        task.timeout_s = timeout_s
    queue.enqueue(graph, allow_failure=allow_failure)
    return graph


def arrival_offsets(count: int, rate_per_s: float, seed: int = 0) -> list[float]:
    """When each of ``count`` Poisson arrivals of ``rate_per_s`` comes, in seconds after the first.

    The gaps between them are exponential with mean 1 / rate_per_s, drawn from
    ``random.Random(seed)``: the same seed gives the same schedule, so an
    open-loop experiment can be repeated. The first arrival is at 0.
    """
    check_int_at_least("count", count, 1)
    check_positive("rate_per_s", rate_per_s)
    rng = random.Random(seed)
    offsets, due = [], 0.0
    for _ in range(count):
        offsets.append(due)
        due += rng.expovariate(rate_per_s)
    return offsets


def arrivals(
    queue: Queue,
    count: int,
    rate_per_s: float,
    duration_ms: float = 10.0,
    seed: int = 0,
    kind: str = "sleep",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
    max_attempts: int = 3,
    should_stop: Callable[[], bool] | None = None,
    enqueued: list[str] | None = None,
    service: str = "fixed",
) -> list[str]:
    """Enqueue ``count`` tasks one at a time as a Poisson process of ``rate_per_s``.

    The queueing-theory notebooks need arrivals spread out in time (the "M" in
    M/M/c) rather than all at once. Each task is enqueued at its time in
    ``arrival_offsets(count, rate_per_s, seed)``, counted from the first (so a
    slow enqueue does not shift the rest). Blocks until the last task is
    enqueued, or until ``should_stop()`` says True (checked before each
    arrival); returns the ids of the tasks enqueued.
    """
    check_non_negative("duration_ms", duration_ms)
    offsets = arrival_offsets(count, rate_per_s, seed)
    payload: dict[str, Any] = {"duration_ms": duration_ms} if kind == "sleep" else {}
    ids = queue.allocate_ids(count)
    start = clock()
    enqueued = enqueued if enqueued is not None else []
    for task, due in zip(make_tasks(ids, kind=kind, payload=payload, max_attempts=max_attempts), offsets, strict=True):
        wait = start + due - clock()
        if wait > 0:
            sleep(wait)
        if should_stop is not None and should_stop():
            break
        queue.enqueue([task])
        enqueued.append(task.id)
    return enqueued


class ArrivalThread:
    """``arrivals`` in a thread of its own, holding the queue open (Queue.hold_open) until the last.

    What ``wqsim.run`` does with an arrival rate: workers run while tasks keep
    coming (open loop), and none of them exits for a queue drained between two
    arrivals. Start it after the workers; ``stop()`` cancels the arrivals left.
    """

    PRODUCER = "arrivals"

    def __init__(
        self,
        queue: Queue,
        count: int,
        rate_per_s: float,
        duration_ms: float = 10.0,
        seed: int = 0,
        kind: str = "sleep",
        max_attempts: int = 3,
        service: str = "fixed",
    ) -> None:
        self.queue = queue
        self.enqueued: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._args = (count, rate_per_s, duration_ms, seed, kind, max_attempts, service)
        arrival_offsets(count, rate_per_s, seed)  # a bad count or rate fails here, not in the thread
        self._thread = threading.Thread(target=self._run, name="wqsim-arrivals", daemon=True)

    def hold(self) -> ArrivalThread:
        """Hold the queue open: call before any worker starts (``start`` does, if not yet)."""
        self.queue.hold_open(self.PRODUCER)
        return self

    def start(self) -> ArrivalThread:
        self.queue.hold_open(self.PRODUCER)
        self._thread.start()
        return self

    def _run(self) -> None:
        count, rate, duration_ms, seed, kind, max_attempts, service = self._args
        try:
            arrivals(
                self.queue,
                count,
                rate,
                duration_ms,
                seed,
                kind,
                sleep=self._stop.wait,
                max_attempts=max_attempts,
                should_stop=self._stop.is_set,
                enqueued=self.enqueued,
                service=service,
            )
        except BaseException as exc:  # reported by the caller: see failed
            self.error = exc
            log.error("Arrivals stopped: %s: %s", type(exc).__name__, exc)
        finally:
            try:
                self.queue.release_hold(self.PRODUCER)
            except Exception as exc:  # Redis is gone: the workers will not see the queue drained
                log.error("Could not release the queue after the arrivals: %s: %s", type(exc).__name__, exc)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def stop(self) -> None:
        """Enqueue no more tasks; the thread then releases the queue (at once, if it never started)."""
        self._stop.set()
        if self._thread.ident is None:
            self.queue.release_hold(self.PRODUCER)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread to end; True if it did (at once if it never started)."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()
