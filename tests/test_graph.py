"""Sequential tasks: graphs validated whole, released atomically, failures cancel or run dependents.

The peers' known failures are the spec here: dependents that wait forever when
a parent fails (rq #1093, #2074), or when a parent's result expired (rq #675);
chords that hang on failure (celery #3317, #5229); cycles nobody detects.
"""

from __future__ import annotations

import time

import pytest

from wqsim import (
    GraphError,
    Queue,
    Settlement,
    Task,
    audit,
    bounds,
    chain,
    diamond,
    fanout,
    layered,
)
from wqsim.graph import find_cycle, topological_order
from wqsim.handlers import HandlerRegistry, noop


def t(task_id: str, *depends_on: str, kind: str = "noop", **kw: object) -> Task:
    return Task(id=task_id, kind=kind, depends_on=depends_on, **kw)  # type: ignore[arg-type]


def statuses(q: Queue) -> dict[str, str]:
    return {i: s.value for i, s in q.statuses().items()}


def complete(q: Queue, task_id: str, result: str = "null", worker: str = "w") -> Settlement:
    """Claim exactly ``task_id`` (it must be next in line) and record it done."""
    claim = q.claim(worker, lease_ms=10_000)
    assert [c.id for c in claim.tasks] == [task_id]
    outcome = Settlement(task_id, claim.lease, "done", result, 1.0, 2.0)  # type: ignore[arg-type]
    q.settle(worker, [outcome], lease_ms=10_000)
    return outcome


def fail_for_good(q: Queue, task_id: str, worker: str = "w") -> None:
    claim = q.claim(worker, lease_ms=10_000)
    assert [c.id for c in claim.tasks] == [task_id]
    q.settle(worker, [Settlement(task_id, claim.lease, "dead", "boom", 1.0, 2.0)], lease_ms=10_000)  # type: ignore[arg-type]


# -- validation: pure, before anything is written ----------------------------------


def test_a_cycle_is_rejected_with_its_path():
    with pytest.raises(GraphError, match=r"dependency cycle: (a -> c -> b -> a|b -> a -> c -> b|c -> b -> a -> c)"):
        topological_order([t("a", "c"), t("b", "a"), t("c", "b"), t("d", "a")])


def test_self_dependency_and_unknown_prerequisite_are_rejected_naming_the_task():
    with pytest.raises(GraphError, match="task x depends on itself"):
        topological_order([t("x", "x")])
    with pytest.raises(GraphError, match="task y depends on unknown task 'ghost'"):
        topological_order([t("x"), t("y", "ghost")])
    with pytest.raises(GraphError, match="appear more than once.*: x"):
        topological_order([t("x"), t("x")])


def test_topological_order_is_layer_by_layer_and_in_submission_order_within_a_layer():
    assert topological_order([t("late", "b"), t("b"), t("a"), t("c", "a")]) == ["b", "a", "late", "c"]


def test_find_cycle_handles_a_long_chain_without_recursion():
    n = 50_000
    prereqs = {str(i): [str(i - 1)] if i else [] for i in range(n)}
    assert find_cycle(prereqs) is None
    prereqs["0"] = [str(n - 1)]
    cycle = find_cycle(prereqs)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == n + 1


def test_example_graphs_have_the_shape_and_critical_path_they_promise():
    c = bounds(chain(5, duration_ms=10), workers=2)
    assert c.critical_path == ("chain-1", "chain-2", "chain-3", "chain-4", "chain-5")
    assert c.critical_path_s == pytest.approx(0.05) and c.per_worker_s == pytest.approx(0.025)

    f = bounds(fanout(8, duration_ms=10), workers=4)
    assert len(f.critical_path) == 3 and f.critical_path_s == pytest.approx(0.03)
    assert f.work_s == pytest.approx(0.1) and f.lower_bound_s == pytest.approx(0.03)

    d = diamond(duration_ms=10)
    assert [x.depends_on for x in d] == [(), ("diamond-a",), ("diamond-a",), ("diamond-b", "diamond-c")]

    first, again = layered(layers=4, width=5, seed=7), layered(layers=4, width=5, seed=7)
    assert [(x.id, x.depends_on, x.payload) for x in first] == [(x.id, x.depends_on, x.payload) for x in again]
    assert all(x.depends_on for x in first if not x.id.startswith("dag-1-"))
    order = topological_order(first)
    assert all(order.index(p) < order.index(x.id) for x in first for p in x.depends_on)


def test_critical_path_follows_the_longest_durations():
    tasks = [
        Task(id="a", kind="sleep", payload={"duration_ms": 10}),
        Task(id="slow", kind="sleep", payload={"duration_ms": 50}, depends_on=("a",)),
        Task(id="fast", kind="sleep", payload={"duration_ms": 5}, depends_on=("a",)),
        Task(id="z", kind="sleep", payload={"duration_ms": 10}, depends_on=("slow", "fast")),
    ]
    b = bounds(tasks, workers=1)
    assert b.critical_path == ("a", "slow", "z") and b.critical_path_s == pytest.approx(0.07)
    assert b.lower_bound_s == pytest.approx(0.075)  # one worker: all the work, in sequence


# -- enqueueing a graph -------------------------------------------------------------


@pytest.mark.parametrize(
    "graph, message",
    [
        ([t("a", "b"), t("b", "a")], "cycle"),
        ([t("a", "a")], "itself"),
        ([t("a"), t("b", "nope")], "unknown task"),
    ],
)
def test_a_rejected_graph_leaves_no_trace_in_redis(make_queue, client, graph, message):
    q = make_queue()
    with pytest.raises(GraphError, match=message):
        q.enqueue(graph)
    assert list(client.scan_iter(match=q.keys.pattern)) == []


def test_an_existing_task_id_is_refused_and_nothing_of_the_enqueue_is_written(make_queue):
    q = make_queue()
    q.enqueue([t("a"), t("b")])
    before = (statuses(q), q.counters(), q.lengths())
    with pytest.raises(Exception, match=r"already exist in queue .*: b; nothing was enqueued"):
        q.enqueue([t("c"), t("b")])
    with pytest.raises(Exception, match="already exist.*: a"):  # several chunks: still all or nothing
        q.enqueue([*(t(f"n{i}") for i in range(30)), t("a")], chunk=7)
    assert (statuses(q), q.counters(), q.lengths()) == before


def test_only_tasks_without_prerequisites_are_queued_and_the_hash_records_the_graph(make_queue):
    q = make_queue()
    q.enqueue(diamond(prefix="d"))
    assert statuses(q) == {"d-a": "queued", "d-b": "waiting", "d-c": "waiting", "d-d": "waiting"}
    assert q.lengths()["ready"] == 1
    d, a = q.task("d-d"), q.task("d-a")
    assert d.depends_on == ("d-b", "d-c") and a.dependents == ("d-b", "d-c")
    assert q.client.hget(q.keys.task("d-d"), "pending") == "2"
    assert audit(q).lost == 0  # waiting on a prerequisite that can still finish is not lost


def test_graph_tasks_cannot_be_packaged(make_queue):
    with pytest.raises(ValueError, match="work packages"):
        make_queue().enqueue(diamond(), package_size=2)


# -- release on completion ----------------------------------------------------------


def test_a_dependent_is_queued_only_when_its_last_prerequisite_completes(make_queue):
    q = make_queue()
    q.enqueue(diamond(prefix="d"))
    complete(q, "d-a")
    assert statuses(q)["d-d"] == "waiting"
    claim = q.claim("w", lease_ms=10_000, count=2)
    assert sorted(c.id for c in claim.tasks) == ["d-b", "d-c"]
    q.settle("w", [Settlement("d-b", claim.lease, "done", "1", 1.0, 2.0)], lease_ms=10_000)
    assert statuses(q)["d-d"] == "waiting"
    q.settle("w", [Settlement("d-c", claim.lease, "done", "2", 1.0, 2.0)], lease_ms=10_000)
    assert statuses(q)["d-d"] == "queued"
    complete(q, "d-d")
    a = audit(q)
    assert a.clean and a.done == 4 and a.completions == 4


def test_two_parents_completed_in_one_settle_release_the_child_once(make_queue):
    q = make_queue()
    q.enqueue([t("p1"), t("p2"), t("child", "p1", "p2")])
    claim = q.claim("w", lease_ms=10_000, count=2)
    outcomes = [Settlement(c.id, claim.lease, "done", "null", 1.0, 2.0) for c in claim.tasks]
    q.settle("w", outcomes + outcomes, lease_ms=10_000)  # the same completions listed twice
    assert q.client.lrange(q.keys.ready, 0, -1) == ["child"]
    assert q.client.hget(q.keys.task("child"), "pending") == "0"


def test_a_duplicate_completion_is_rejected_and_does_not_release_anything_twice(make_queue):
    q = make_queue()
    q.enqueue([t("p1"), t("p2"), t("child", "p1", "p2")])
    first = complete(q, "p1")
    reply = q.settle("w", [first], lease_ms=10_000)  # a retried network call, say
    assert reply.rejected == ["p1"]
    assert q.client.hget(q.keys.task("child"), "pending") == "1"
    assert statuses(q)["child"] == "waiting"


@pytest.mark.real_redis
def test_redelivery_after_a_lease_expiry_releases_the_dependent_exactly_once(real_client, queue_name):
    q = Queue(real_client, queue_name)
    try:
        q.enqueue([t("parent"), t("child", "parent")])
        stale = q.claim("slow", lease_ms=50)
        time.sleep(0.1)  # Redis expires the lease key
        assert q.reap().returned == 1
        complete(q, "parent", worker="fast")
        late = q.settle("slow", [Settlement("parent", stale.lease, "done", "null", 1.0, 2.0)], lease_ms=1000)  # type: ignore[arg-type]
        assert late.rejected == ["parent"]
        assert q.client.lrange(q.keys.ready, 0, -1) == ["child"]
        complete(q, "child", worker="fast")
        a = audit(q)
        assert a.clean and a.done == 2 and a.completed_twice == 0 and a.expired == 1
    finally:
        q.purge()


# -- failure policy -----------------------------------------------------------------


def test_a_failed_task_cancels_exactly_its_transitive_dependents(make_queue):
    q = make_queue()
    #   a -> b -> c      x (independent)
    #    \-> d           e needs both b and x
    q.enqueue([t("a"), t("x"), t("b", "a"), t("d", "a"), t("c", "b"), t("e", "b", "x")])
    fail_for_good(q, "a")
    s = statuses(q)
    assert {i for i, v in s.items() if v == "cancelled"} == {"b", "c", "d", "e"}
    assert s["x"] == "queued" and s["a"] == "dead"
    c = q.task("c")
    assert c.cancelled_by == "a" and "prerequisite b did not succeed (failed ancestor a)" in c.error
    complete(q, "x")  # e was cancelled already: x finishing must not queue it
    assert statuses(q)["e"] == "cancelled" and q.lengths()["ready"] == 0
    a = audit(q)
    assert a.clean and (a.done, a.dead, a.cancelled) == (1, 1, 4)
    assert q.drained()
    events = [e for e in q.events() if e["event"] == "cancelled"]
    assert sorted(e["id"] for e in events) == ["b", "c", "d", "e"]


def test_with_allow_failure_dependents_run_and_see_the_failure(make_queue):
    q = make_queue()
    q.enqueue([t("a"), t("ok"), t("b", "a", "ok")], allow_failure=True)
    fail_for_good(q, "a")
    assert statuses(q)["b"] == "waiting"
    complete(q, "ok", result='{"n": 1}')
    claim = q.claim("w", lease_ms=10_000)
    (claimed,) = claim.tasks
    assert claimed.id == "b" and list(claimed.inputs) == ["a", "dead", "boom", "ok", "done", '{"n": 1}']


def test_allow_failure_is_per_task_too(make_queue):
    q = make_queue()
    q.enqueue([t("a"), t("strict", "a"), t("lenient", "a", allow_failure=True)])
    fail_for_good(q, "a")
    assert statuses(q) == {"a": "dead", "strict": "cancelled", "lenient": "queued"}


def test_a_task_dead_lettered_by_the_reaper_cancels_its_dependents_too(make_queue, client):
    q = make_queue(clock=lambda: 1000.0)
    q.enqueue([t("a", max_attempts=1), t("b", "a")])
    claim = q.claim("w", lease_ms=60_000)
    client.delete(q.keys.lease(claim.lease))  # as if its TTL had run out
    assert q.reap(now=2000.0).buried == 1
    assert statuses(q) == {"a": "dead", "b": "cancelled"}
    assert audit(q).clean


# -- result passing through a worker ----------------------------------------------


def test_a_handler_receives_its_prerequisites_results_by_id(make_queue, make_worker, queue_name):
    registry = HandlerRegistry()
    registry.register("noop", noop)

    @registry.register("number")
    def number(task: Task) -> int:
        return int(task.payload["n"])

    @registry.register("add")
    def add(task: Task) -> dict[str, object]:
        return {"sum": sum(task.inputs.values()), "from": sorted(task.inputs), "errors": task.input_errors}

    q = make_queue()
    q.enqueue(
        [
            Task(id="one", kind="number", payload={"n": 1}),
            Task(id="two", kind="number", payload={"n": 2}),
            Task(id="total", kind="add", depends_on=("one", "two")),
        ]
    )
    worker = make_worker()
    worker.registry = registry
    worker.run()
    assert q.task("total").result == {"sum": 3, "from": ["one", "two"], "errors": {}}


def test_the_worker_runs_a_graph_in_dependency_order(make_queue, make_worker):
    q = make_queue()
    tasks = layered(layers=4, width=4, seed=3, duration_ms=(0, 0))
    q.enqueue(tasks)
    make_worker(batch_size=3).run()
    hashes = {x.id: q.task(x.id) for x in tasks}
    for x in tasks:
        for p in x.depends_on:
            assert hashes[x.id].started_at >= hashes[p].finished_at
    assert audit(q).clean and audit(q).done == len(tasks)


def test_generate_graph_enqueues_an_example_graph_whole_with_the_given_attempts_and_time_limit(fake_client):
    from wqsim import generate_graph

    q = Queue(fake_client, "gg")
    tasks = generate_graph(q, "diamond", duration_ms=5, max_attempts=7, timeout_s=9.0, allow_failure=True)
    assert [t.id for t in tasks] == ["diamond-a", "diamond-b", "diamond-c", "diamond-d"]
    stored = [q.task(t.id) for t in tasks]
    assert {(s.max_attempts, s.timeout_s) for s in stored} == {(7, 9.0)}
    assert q.counters()["total"] == 4 and q.lengths()["ready"] == 1  # only the root is ready


def test_the_cli_offers_exactly_the_graphs_graph_module_defines():
    from wqsim.cli import UsageError, build_parser
    from wqsim.graph import GRAPHS

    offered = ", ".join(repr(name) for name in GRAPHS)
    for command in ("run", "generate"):
        assert [build_parser().parse_args([command, "--graph", name]).graph for name in GRAPHS] == list(GRAPHS)
        with pytest.raises(UsageError, match=f"invalid choice: 'ring' \\(choose from {offered}\\)"):
            build_parser().parse_args([command, "--graph", "ring"])
