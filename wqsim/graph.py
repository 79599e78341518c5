"""Task graphs: validation, example generators and the critical-path bound.

The seed's "Sequential Tasks": a task may name prerequisites (``depends_on``)
whose results it needs; it is queued only once all of them are done. This
module is pure Python, no Redis: a graph is checked here before a byte of it is
written, so an unknown id, a self-dependency or a cycle is rejected whole, with
the offending path in the message. The release itself happens in Redis,
atomically, in the script that records a completion (``lua/_lib.lua``).
"""

from __future__ import annotations

import graphlib
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .config import check_int_at_least, check_probability
from .task import Task


class GraphError(ValueError):
    """A graph that cannot run: unknown prerequisite, self-dependency or cycle."""


def validate(tasks: Sequence[Task]) -> dict[str, list[str]]:
    """Check a graph; return each task's dependents (the reverse edges), in submission order.

    Prerequisites must be tasks of the same submission: a graph is written as one
    atomic unit, so there is never a half-written graph for a dependent to wait on.
    """
    ids = [t.id for t in tasks]
    seen: set[str] = set()
    repeated = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
    if repeated:
        raise GraphError(f"task id(s) appear more than once in the graph: {', '.join(repeated)}")
    dependents: dict[str, list[str]] = {i: [] for i in ids}
    for task in tasks:
        for prereq in task.depends_on:
            if prereq == task.id:
                raise GraphError(f"task {task.id} depends on itself")
            if prereq not in dependents:
                raise GraphError(f"task {task.id} depends on unknown task {prereq!r} (not in this graph)")
            if task.id in dependents[prereq]:
                raise GraphError(f"task {task.id} lists prerequisite {prereq} twice")
            dependents[prereq].append(task.id)
    cycle = find_cycle({t.id: t.depends_on for t in tasks})
    if cycle:
        raise GraphError(f"dependency cycle: {' -> '.join(cycle)}")
    return dependents


def _sorter(prerequisites: Mapping[str, Iterable[str]]) -> graphlib.TopologicalSorter[str]:
    """The standard library's topological sorter (Kahn's algorithm) over these edges.

    Every id is added before any edge, so tasks that become ready together come
    out in submission order, and the order reads layer by layer.
    """
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for task_id in prerequisites:
        sorter.add(task_id)
    for task_id, prereqs in prerequisites.items():
        sorter.add(task_id, *prereqs)
    return sorter


def find_cycle(prerequisites: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as a path ``[a, b, ..., a]`` (each depends on the next), or None.

    graphlib finds it without recursion (a 100,000-task chain is fine) and hands
    it over in ``CycleError.args[1]`` the other way round: each node a
    prerequisite of the next. Reversed, it reads as the dependencies do.
    """
    try:
        _sorter(prerequisites).prepare()
    except graphlib.CycleError as exc:
        return list(reversed(exc.args[1]))
    return None


def topological_order(tasks: Sequence[Task]) -> list[str]:
    """Task ids, each after all of its prerequisites (validates first)."""
    validate(tasks)
    return list(_sorter({t.id: t.depends_on for t in tasks}).static_order())


def sleep_seconds(task: Task) -> float:
    """How long a task takes by its payload: a sleep task's ``duration_ms``, else 0."""
    return float(task.payload.get("duration_ms", 0)) / 1000


@dataclass(frozen=True)
class Bounds:
    """Lower bounds on a graph's makespan, in seconds, and the path that sets one."""

    critical_path_s: float  # the longest chain: no number of workers beats it
    critical_path: tuple[str, ...]
    work_s: float  # the sum of all durations
    workers: int

    @property
    def per_worker_s(self) -> float:
        """Work divided among the workers: no schedule beats it either."""
        return self.work_s / self.workers

    @property
    def lower_bound_s(self) -> float:
        return max(self.critical_path_s, self.per_worker_s)


def bounds(tasks: Sequence[Task], workers: int = 1, duration: Callable[[Task], float] = sleep_seconds) -> Bounds:
    """The critical path and the work/workers bound of a graph (durations by ``duration``)."""
    check_int_at_least("workers", workers, 1)
    by_id = {t.id: t for t in tasks}
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for task_id in topological_order(tasks):
        task = by_id[task_id]
        before = max(task.depends_on, key=lambda p: finish[p], default=None)
        via[task_id] = before
        finish[task_id] = (finish[before] if before else 0.0) + duration(task)
    end = max(finish, key=lambda i: finish[i], default=None)
    path: list[str] = []
    while end is not None:
        path.append(end)
        end = via[end]
    return Bounds(
        critical_path_s=finish[path[0]] if path else 0.0,
        critical_path=tuple(reversed(path)),
        work_s=sum(duration(t) for t in tasks),
        workers=workers,
    )


# -- example graphs -------------------------------------------------------------
# Each returns sleep tasks with ids "<prefix>-<n>"; the prefix keeps two graphs
# apart in one queue (enqueue refuses ids that already exist).


def _sleep(task_id: str, duration_ms: float, depends_on: Iterable[str] = (), **kw: object) -> Task:
    return Task(id=task_id, kind="sleep", payload={"duration_ms": duration_ms}, depends_on=tuple(depends_on), **kw)  # type: ignore[arg-type]


def chain(length: int, duration_ms: float = 10.0, prefix: str = "chain") -> list[Task]:
    """t1 -> t2 -> ... -> tn: each needs the one before. Critical path = all of it."""
    check_int_at_least("length", length, 1)
    return [_sleep(f"{prefix}-{i}", duration_ms, [f"{prefix}-{i - 1}"] if i > 1 else []) for i in range(1, length + 1)]


def fanout(width: int, duration_ms: float = 10.0, prefix: str = "fan") -> list[Task]:
    """Map-reduce: one split task, ``width`` map tasks that need it, one reduce that needs them all."""
    check_int_at_least("width", width, 1)
    maps = [_sleep(f"{prefix}-map-{i}", duration_ms, [f"{prefix}-split"]) for i in range(1, width + 1)]
    return [
        _sleep(f"{prefix}-split", duration_ms),
        *maps,
        _sleep(f"{prefix}-reduce", duration_ms, [m.id for m in maps]),
    ]


def diamond(duration_ms: float = 10.0, prefix: str = "diamond") -> list[Task]:
    """a -> (b, c) -> d: the smallest graph where a task waits for two parents."""
    a, b, c, d = (f"{prefix}-{x}" for x in "abcd")
    return [
        _sleep(a, duration_ms),
        _sleep(b, duration_ms, [a]),
        _sleep(c, duration_ms, [a]),
        _sleep(d, duration_ms, [b, c]),
    ]


def layered(
    layers: int = 5,
    width: int = 8,
    edge_p: float = 0.3,
    duration_ms: tuple[float, float] = (5.0, 20.0),
    seed: int = 0,
    prefix: str = "dag",
) -> list[Task]:
    """A random layered DAG: each task depends on each task of the layer above with
    probability ``edge_p`` (at least one, so the layers really are layers).
    Durations are uniform in ``duration_ms``; ``seed`` makes it reproducible."""
    check_int_at_least("layers", layers, 1)
    check_int_at_least("width", width, 1)
    check_probability("edge_p", edge_p)
    rng = random.Random(seed)
    low, high = duration_ms
    tasks: list[Task] = []
    above: list[str] = []
    for layer in range(1, layers + 1):
        here: list[str] = []
        for i in range(1, width + 1):
            prereqs = [p for p in above if rng.random() < edge_p] or ([rng.choice(above)] if above else [])
            task_id = f"{prefix}-{layer}-{i}"
            tasks.append(_sleep(task_id, round(rng.uniform(low, high), 3), prereqs))
            here.append(task_id)
        above = here
    return tasks


GRAPHS: dict[str, Callable[..., list[Task]]] = {
    "chain": chain,
    "fanout": fanout,
    "diamond": diamond,
    "layered": layered,
}


def example(name: str, tasks: int = 20, duration_ms: float = 10.0, seed: int = 0) -> list[Task]:
    """An example graph of about ``tasks`` sleep tasks, by name (the CLI's ``--graph``).

    chain: ``tasks`` long; fanout: ``tasks - 2`` maps between a split and a reduce;
    diamond: always 4; layered: about sqrt(tasks) wide, seeded by ``seed``.
    """
    if name not in GRAPHS:
        raise ValueError(f"unknown graph {name!r} (choose from {', '.join(GRAPHS)})")
    check_int_at_least("tasks", tasks, 1)
    if name == "chain":
        return chain(tasks, duration_ms)
    if name == "fanout":
        return fanout(max(tasks - 2, 1), duration_ms)
    if name == "diamond":
        return diamond(duration_ms)
    width = max(1, round(math.sqrt(tasks)))
    return layered(
        layers=max(1, -(-tasks // width)), width=width, duration_ms=(duration_ms / 2, duration_ms * 1.5), seed=seed
    )
