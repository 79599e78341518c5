"""The audit while tasks move: it never reports a loss that did not happen, and still reports a real one.

Its counts come from one atomic snapshot, and a task that looks out of place
in the (non-atomic) hash scan is only a suspect until a second atomic read
confirms it. These tests drive the race deterministically (a scan that moves
tasks before it reads them, a scan that returns keys twice) and for real (an
audit polled through a chaos run of worker processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import pytest
from helpers import running

import wqsim.streams
from wqsim import (
    Audit,
    ChaosConfig,
    Queue,
    Reaper,
    Settlement,
    Task,
    WorkerConfig,
    WorkerPool,
    audit,
    connect,
    generate,
)


def t(task_id: str, *depends_on: str) -> Task:
    return Task(id=task_id, kind="noop", depends_on=depends_on)


def settle_next(q: Queue, outcome: str = "done", expect: str | None = None, backoff_s: float = 0.0) -> str:
    """Claim the next ready entry and record ``outcome`` for its first task; returns its id."""
    claim = q.claim("w", lease_ms=60_000)
    task = claim.tasks[0]
    assert expect is None or task.id == expect
    q.settle("w", [Settlement(task.id, claim.lease, outcome, "null", 1.0, 2.0)], lease_ms=60_000, backoff_s=backoff_s)  # type: ignore[arg-type]
    return task.id


def adds_up(a: Audit) -> bool:
    """Every task the queue took in is terminal or in flight, at the snapshot's instant."""
    return a.generated == a.terminal + a.in_flight


def scan_wrapped(q: Queue, monkeypatch: pytest.MonkeyPatch, wrap: Callable[[Iterator], Iterator]) -> None:
    """Make ``q.iter_task_hashes`` (the audit's scan) go through ``wrap``."""
    original = q.iter_task_hashes

    def scan(fields: Sequence[str], chunk: int = 1000) -> Iterator:
        return wrap(original(fields, chunk))

    monkeypatch.setattr(q, "iter_task_hashes", scan)


# -- tasks in motion are not lost -------------------------------------------------------


def test_tasks_that_move_between_the_snapshot_and_the_scan_are_not_reported_lost(make_queue, monkeypatch):
    q = make_queue()
    generate(q, 4)
    suspects: list[str] = []
    verify = q.verify_lost
    monkeypatch.setattr(q, "verify_lost", lambda ids: suspects.extend(ids) or verify(ids))

    def moving(items: Iterator) -> Iterator:
        # After the snapshot saw tasks 1-4 queued: 1 is claimed by a lease the snapshot
        # never saw, 2 is done, 3 fails and waits for its retry. Then the hashes are read.
        q.claim("late", lease_ms=60_000)
        settle_next(q, "done", expect="2")
        settle_next(q, "retry", expect="3", backoff_s=60)
        yield from items

    scan_wrapped(q, monkeypatch, moving)
    a = audit(q)
    assert sorted(suspects) == ["1", "3"]  # the scan saw them out of place: the race really happened
    assert (a.lost, a.lost_ids) == (0, ())
    # The counts are the snapshot's, before any of it: done and completions of the same instant.
    assert (a.generated, a.queued, a.running, a.done, a.completions) == (4, 4, 0, 0, 0)
    assert adds_up(a)


def test_scan_returning_a_key_twice_neither_double_counts_nor_hides_a_shortfall(make_queue, monkeypatch):
    q = make_queue()
    generate(q, 3)
    settle_next(q, expect="1")
    q.client.delete(q.keys.events, q.keys.task("1"))  # a done task's hash gone, and no record names it
    expected = audit(q)
    assert (expected.lost, expected.lost_ids, expected.executions) == (1, (), 0)

    def twice(items: Iterator) -> Iterator:
        for item in items:
            yield item
            yield item

    scan_wrapped(q, monkeypatch, twice)
    assert audit(q) == expected


# -- real losses are still reported ---------------------------------------------------------


def _queued(q: Queue) -> str:
    return "2"


def _running(q: Queue) -> str:
    return q.claim("w", lease_ms=60_000).tasks[0].id


def _done(q: Queue) -> str:
    return settle_next(q)


@pytest.mark.parametrize("make_victim", [_queued, _running, _done], ids=["queued", "running", "done"])
def test_a_task_hash_deleted_by_hand_is_reported_lost_by_id(make_queue, make_victim):
    q = make_queue()
    generate(q, 3)
    victim = make_victim(q)
    q.client.delete(q.keys.task(victim))
    a = audit(q)
    assert (a.lost, a.lost_ids, a.clean) == (1, (victim,), False)


def test_a_hash_deleted_with_no_id_left_anywhere_still_counts_as_lost(make_queue):
    q = make_queue()
    generate(q, 2)
    settle_next(q, expect="1")
    q.client.delete(q.keys.task("1"), q.keys.events)  # neither a structure nor the stream names it now
    a = audit(q)
    assert (a.lost, a.lost_ids) == (1, ())  # fewer hashes than the queue took in


def _unclaim(q: Queue) -> str:
    claim = q.claim("w", lease_ms=60_000)
    q.client.srem(q.keys.held(claim.lease), claim.tasks[0].id)  # no reaper will ever return it
    return claim.tasks[0].id


def _unschedule(q: Queue) -> str:
    task_id = settle_next(q, "retry", backoff_s=60)
    q.client.zrem(q.keys.delayed, task_id)
    return task_id


def _unbury(q: Queue) -> str:
    task_id = settle_next(q, "dead")
    q.client.lrem(q.keys.dead, 1, task_id)
    return task_id


def _unpackage(q: Queue) -> str:
    q.client.lrem(q.keys.package("2"), 1, "3")  # generate(package_size=2) put 3 and 4 in package 2
    return "3"


@pytest.mark.parametrize(
    "remove", [_unclaim, _unschedule, _unbury, _unpackage], ids=["running", "scheduled", "dead", "package member"]
)
def test_an_id_removed_from_the_structure_its_status_requires_is_reported_lost(make_queue, remove):
    q = make_queue()
    generate(q, 4, package_size=2)
    victim = remove(q)
    assert audit(q).lost_ids == (victim,)


def test_the_verification_finds_every_task_of_a_consistent_queue_in_its_place(make_queue):
    q = make_queue()
    generate(q, 6, package_size=2)  # packages 1: 1 2, 2: 3 4, 3: 5 6
    claim = q.claim("w", lease_ms=60_000)  # package 1
    q.settle(
        "w",
        [
            Settlement("1", claim.lease, "done", "null", 1.0, 2.0),
            Settlement("2", claim.lease, "retry", "boom", 1.0, 2.0),
        ],
        lease_ms=60_000,
        backoff_s=60,
    )
    claim = q.claim("w", lease_ms=60_000)  # package 2
    q.settle("w", [Settlement("3", claim.lease, "dead", "boom", 1.0, 2.0)], lease_ms=60_000)
    q.enqueue([t("a"), t("b", "a")])
    statuses = {i: s.value for i, s in q.statuses().items()}
    assert statuses == {
        "1": "done",
        "2": "scheduled",
        "3": "dead",
        "4": "running",
        "5": "queued",
        "6": "queued",
        "a": "queued",
        "b": "waiting",
    }
    assert q.verify_lost(list(statuses)) == []
    assert q.verify_lost(["nope"]) == ["nope"]  # no hash at all


def test_the_event_stream_is_read_in_pages_up_to_the_snapshot_and_tolerates_entries_without_ids(
    make_queue, monkeypatch
):
    q = make_queue()
    generate(q, 5)
    for _ in range(5):
        settle_next(q)
    q.client.xadd(q.keys.events, {"event": "note"})  # an entry naming no task
    monkeypatch.setattr(wqsim.streams, "PAGE", 2)
    a = audit(q)
    assert (a.done, a.completions, a.completed_twice, a.lost) == (5, 5, 0, 0) and a.clean


def test_a_waiting_task_whose_prerequisites_all_ended_is_reported_stuck(make_queue):
    q = make_queue()
    q.enqueue([t("a"), t("b", "a")])
    settle_next(q, expect="a")
    q.client.lrem(q.keys.ready, 1, "b")
    q.client.hset(q.keys.task("b"), "status", "waiting")  # as if the release had been lost
    assert audit(q).lost_ids == ("b",)


# -- the waiting counter -----------------------------------------------------------------


def waiting_statuses(q: Queue) -> int:
    return sum(1 for s in q.statuses().values() if s.value == "waiting")


def assert_waiting_exact(q: Queue) -> None:
    a = audit(q)
    assert q.counters().get("waiting", 0) == a.waiting == waiting_statuses(q)
    assert adds_up(a) and a.lost == 0


def test_the_waiting_counter_stays_exact_through_release_cancellation_and_allow_failure(make_queue):
    q = make_queue()
    #   a -> b -> c      x (independent)
    #    \-> d           e needs both b and x
    q.enqueue([t("a"), t("x"), t("b", "a"), t("d", "a"), t("c", "b"), t("e", "b", "x")], chunk=2)  # several chunks
    assert_waiting_exact(q)
    assert q.counters()["waiting"] == 4
    settle_next(q, "dead", expect="a")  # cancels b, c, d and e, transitively
    assert_waiting_exact(q)
    settle_next(q, expect="x")
    assert_waiting_exact(q)

    q2 = Queue(q.client, q.name + "-2")
    try:
        q2.enqueue([t("p"), t("ok"), t("m", "p", "ok"), t("n", "m")], allow_failure=True)
        assert_waiting_exact(q2)
        settle_next(q2, "dead", expect="p")  # m still waits for ok
        assert_waiting_exact(q2)
        settle_next(q2, expect="ok")  # m released despite p's failure
        assert_waiting_exact(q2)
        settle_next(q2, expect="m")
        settle_next(q2, expect="n")
        assert_waiting_exact(q2)
        assert q2.counters()["waiting"] == 0 and audit(q2).clean
    finally:
        q2.purge()


# -- for real: polled through a chaos run -------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.slow
def test_an_audit_polled_through_a_chaos_run_never_reports_a_loss_and_its_counts_always_add_up(redis_url, queue_name):
    n = 500
    q = Queue(connect(redis_url), queue_name)
    generate(q, n, duration_ms=3, max_attempts=10)
    chaos = ChaosConfig(seed=1, fail_p=0.05, hang_p=0.01, crash_p=0.01, straggler_p=0.05, hang_s=1.0)
    pool = WorkerPool(redis_url, queue_name, ["1", "2", "3"], WorkerConfig(lease_s=0.5), chaos, mode="process")
    reaper = Reaper(Queue(connect(redis_url), queue_name), 0.125)
    polls: list[Audit] = []
    try:
        with running(pool, reaper.start()):
            deadline = time.monotonic() + 120
            while not q.drained() and time.monotonic() < deadline:
                polls.append(audit(q))
                time.sleep(0.01)  # the polling period of `wqsim status` in a loop, not a synchronisation
            assert q.drained(), polls[-1].summary()
            assert pool.join(30)
        final = audit(q)
    finally:
        q.purge()

    bad = [a for a in polls if a.lost or a.completed_twice or not adds_up(a) or a.done != a.completions]
    assert bad == [], [(a.summary(), a.lost_ids, a.twice_ids, a.in_flight) for a in bad[:5]]
    assert len(polls) >= 20 and any(a.running for a in polls)  # it really audited tasks in motion
    assert final.clean and final.done + final.dead == n, final.summary()
    assert final.executions > n and final.expired >= 1  # faults happened, and the reaper returned leases
