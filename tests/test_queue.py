"""The queue contract, run against fakeredis and a real redis-server alike."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import pytest
from helpers import FakeClock, done_count

from wqsim import Keys, Queue, Settlement, Status, Task, audit, generate, make_tasks


def settle_one(q: Queue, claim, outcome: str = "done", value: str = "null", worker: str = "w1", backoff_s: float = 0.0):
    """Settle the first task of ``claim`` under its lease."""
    task = claim.tasks[0]
    return q.settle(
        worker, [Settlement(task.id, claim.lease, outcome, value, 1.0, 2.0)], lease_ms=1000, backoff_s=backoff_s
    )


def test_enqueue_writes_hashes_and_pushes_ids_in_fifo_order(make_queue):
    q = make_queue()
    ids = generate(q, 3, duration_ms=5)
    assert ids == ["1", "2", "3"]
    assert q.client.lrange(q.keys.ready, 0, -1) == ["3", "2", "1"]  # LPUSH in, RPOP out
    task = q.task("1")
    assert (task.kind, task.payload, task.status, task.attempt) == ("sleep", {"duration_ms": 5}, Status.QUEUED, 0)
    assert task.created_at is not None and task.enqueued_at is not None
    assert q.counters()["total"] == 3


def test_ids_are_unique_across_generator_calls(make_queue):
    q = make_queue()
    assert generate(q, 2) + generate(q, 2) == ["1", "2", "3", "4"]


def test_claim_takes_oldest_task_under_a_fenced_lease(make_queue):
    q = make_queue()
    generate(q, 2)
    claim = q.claim("w1", lease_ms=5000)
    assert [t.id for t in claim.tasks] == ["1"]
    assert claim.lease == "w1#1"
    assert (claim.tasks[0].kind, claim.tasks[0].attempt) == ("sleep", 1)
    task = q.task("1")
    assert (task.status, task.worker, task.lease, task.attempt) == (Status.RUNNING, "w1", "w1#1", 1)
    assert q.client.get(q.keys.lease("w1#1")) == "w1"
    assert 0 < q.client.pttl(q.keys.lease("w1#1")) <= 5000
    assert q.client.smembers(q.keys.held("w1#1")) == {"1"}
    assert q.client.zrange(q.keys.inflight, 0, -1) == ["w1#1"]


def test_claim_of_several_tasks_is_one_call_under_one_lease(make_queue):
    q = make_queue()
    generate(q, 5)
    claim = q.claim("w1", lease_ms=5000, count=3)
    assert [t.id for t in claim.tasks] == ["1", "2", "3"]
    assert q.client.smembers(q.keys.held(claim.lease)) == {"1", "2", "3"}
    assert q.client.zcard(q.keys.inflight) == 1


def test_each_claim_gets_a_new_lease_id(make_queue):
    q = make_queue()
    generate(q, 2)
    assert [q.claim("w1", lease_ms=5000).lease for _ in range(2)] == ["w1#1", "w1#2"]


def test_completion_writes_result_back_and_records_an_event(make_queue):
    q = make_queue()
    generate(q, 1)
    claim = q.claim("w1", lease_ms=5000)
    reply = settle_one(q, claim, "done", json.dumps({"answer": 42}))
    assert reply.rejected == [] and reply.drained
    task = q.task("1")
    assert (task.status, task.result, done_count(q, "1")) == (Status.DONE, {"answer": 42}, 1)
    assert (task.started_at, task.finished_at) == (1.0, 2.0)  # as the worker measured them
    assert task.enqueued_at is not None and task.worker == "w1"
    assert not q.client.exists(q.keys.lease(claim.lease), q.keys.held(claim.lease))
    assert q.client.zcard(q.keys.inflight) == 0
    assert [(e["event"], e["id"]) for e in q.events()] == [("done", "1")]


def test_completion_is_announced_on_the_progress_channel(make_queue):
    q = make_queue()
    generate(q, 1)
    pubsub = q.client.pubsub()
    pubsub.subscribe(q.keys.progress_channel)
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    settle_one(q, q.claim("w1", lease_ms=5000))
    message = pubsub.get_message(timeout=1)
    (done,) = [e for e in q.events() if e["event"] == "done"]
    assert message["data"] == f"{done['entry']} done 1"  # the stream entry that records it comes first
    pubsub.close()


def test_duplicate_completion_is_rejected_and_counted_once(make_queue):
    q = make_queue()
    generate(q, 1)
    claim = q.claim("w1", lease_ms=5000, count=2)
    settle_one(q, claim)
    assert settle_one(q, claim).rejected == ["1"]
    assert done_count(q, "1") == 1
    assert audit(q).completed_twice == 0


def test_a_task_listed_twice_in_one_settle_is_recorded_once(make_queue):
    q = make_queue()
    generate(q, 2)
    claim = q.claim("w1", lease_ms=5000, count=2)
    twice = [Settlement("1", claim.lease, "done", "null")] * 2 + [Settlement("2", claim.lease, "done", "null")]
    assert q.settle("w1", twice, lease_ms=1000).rejected == ["1"]
    assert (done_count(q, "1"), q.counters()["done"]) == (1, 2)
    assert audit(q).completed_twice == 0


def test_late_completion_after_lease_expiry_is_rejected_and_not_recorded(make_queue):
    q = make_queue()
    generate(q, 1)
    claim = q.claim("w1", lease_ms=30)
    time.sleep(0.08)  # Redis expires the lease key
    assert settle_one(q, claim).rejected == ["1"]
    task = q.task("1")
    assert task.status == Status.RUNNING and done_count(q, "1") == 0
    assert [e["event"] for e in q.events()] == ["rejected"]


def test_expired_lease_returns_task_to_ready_exactly_once(make_queue):
    q = make_queue()
    generate(q, 1)
    q.claim("w1", lease_ms=30)
    time.sleep(0.08)  # Redis expires the lease key
    results = [q.reap(now=time.time() + 60) for _ in range(3)]  # three reapers, one after another
    assert sum(r.returned for r in results) == 1
    assert q.client.lrange(q.keys.ready, 0, -1) == ["1"]
    assert q.task("1").status == Status.QUEUED
    assert "lease w1#1 expired on worker w1" in q.task("1").error
    assert [e["event"] for e in q.events()] == ["expired"]
    assert not q.client.exists(q.keys.held("w1#1"))


def test_reaper_leaves_a_live_lease_alone_even_with_a_clock_far_ahead(make_queue):
    q = make_queue()
    generate(q, 1)
    q.claim("w1", lease_ms=60_000)
    assert q.reap(now=time.time() + 3600).returned == 0
    assert q.task("1").status == Status.RUNNING


def test_reaped_task_is_claimed_again_with_a_new_token_and_old_owner_is_fenced_out(make_queue):
    q = make_queue()
    generate(q, 1)
    old = q.claim("w1", lease_ms=30)
    time.sleep(0.08)  # Redis expires the lease key
    q.reap(now=time.time() + 60)
    new = q.claim("w2", lease_ms=5000)
    assert (new.lease, new.tasks[0].attempt) == ("w2#2", 2)
    assert settle_one(q, old, worker="w1").rejected == ["1"]
    assert settle_one(q, new, worker="w2").rejected == []
    assert done_count(q, "1") == 1


def test_failed_task_is_retried_after_backoff(make_queue):
    clock = FakeClock()
    q = make_queue(clock=clock)
    generate(q, 1, max_attempts=3)
    reply = settle_one(q, q.claim("w1", lease_ms=5000), "retry", "ValueError: boom", backoff_s=2.0)
    assert q.task("1").status == Status.SCHEDULED and q.task("1").error == "ValueError: boom"
    assert reply.next_due == pytest.approx(clock.now + 2.0)
    assert q.claim("w1", lease_ms=5000).tasks == []  # not due yet
    clock.now += 2.5
    again = q.claim("w1", lease_ms=5000).tasks
    assert [(t.id, t.attempt) for t in again] == [("1", 2)]


def test_task_that_uses_all_attempts_is_dead_lettered_with_its_last_error(make_queue):
    clock = FakeClock()
    q = make_queue(clock=clock)
    generate(q, 1, max_attempts=2)
    for attempt in (1, 2):
        settle_one(q, q.claim("w1", lease_ms=5000), "retry", f"boom {attempt}")
        clock.now += 10
    task = q.task("1")
    assert (task.status, task.error, task.attempt) == (Status.DEAD, "boom 2", 2)
    assert q.client.lrange(q.keys.dead, 0, -1) == ["1"]
    assert q.claim("w1", lease_ms=5000).drained


def test_expired_lease_on_the_last_attempt_dead_letters_the_task(make_queue):
    q = make_queue()
    generate(q, 1, max_attempts=1)
    q.claim("w1", lease_ms=30)
    time.sleep(0.08)  # Redis expires the lease key
    assert q.reap(now=time.time() + 60).buried == 1
    assert q.task("1").status == Status.DEAD
    assert "no attempts left" in q.task("1").error


def test_queue_in_ready_whose_hash_is_missing_is_dead_lettered(make_queue):
    q = make_queue()
    generate(q, 1)
    q.client.lpush(q.keys.ready, "ghost")
    claimed = q.claim("w1", lease_ms=5000, count=5).tasks
    assert [t.id for t in claimed] == ["1"]
    ghost = q.client.hgetall(q.keys.task("ghost"))
    assert ghost["status"] == "dead" and "does not exist" in ghost["error"]
    assert q.client.lrange(q.keys.dead, 0, -1) == ["ghost"]
    assert q.counters()["total"] == 2  # the orphan is counted, so termination still adds up


def test_stale_duplicate_id_in_ready_is_dropped_not_run_twice(make_queue):
    q = make_queue()
    generate(q, 1)
    settle_one(q, q.claim("w1", lease_ms=5000))
    q.client.lpush(q.keys.ready, "1")  # someone pushes a finished task again
    assert q.claim("w1", lease_ms=5000).tasks == []
    assert done_count(q, "1") == 1
    assert q.counters()["dropped"] == 1


def test_claim_reports_drained_only_when_every_task_is_terminal(make_queue):
    q = make_queue()
    generate(q, 2)
    first = q.claim("w1", lease_ms=5000)
    second = q.claim("w2", lease_ms=5000)
    assert not q.claim("w3", lease_ms=5000).drained  # ready is empty but two tasks are in flight
    settle_one(q, first)
    assert not q.claim("w3", lease_ms=5000).drained
    settle_one(q, second, worker="w2")
    assert q.claim("w3", lease_ms=5000).drained and q.drained()


def test_heartbeat_renews_a_live_lease_and_reports_a_lost_one(make_queue):
    q = make_queue()
    generate(q, 2)
    a, b = q.claim("w1", lease_ms=200).lease, q.claim("w1", lease_ms=200).lease
    q.client.delete(q.keys.lease(b))  # as if Redis had expired it
    assert q.heartbeat([a, b], lease_ms=60_000) == [b]
    assert q.client.pttl(q.keys.lease(a)) > 1000
    assert not q.client.exists(q.keys.lease(b))  # a lost lease is never resurrected


def test_work_package_is_claimed_whole_under_one_lease_in_one_call(make_queue):
    q = make_queue()
    generate(q, 7, package_size=3)
    assert q.client.lrange(q.keys.ready, 0, -1) == ["pkg:3", "pkg:2", "pkg:1"]
    claim = q.claim("w1", lease_ms=5000, count=1)  # count does not split a package
    assert claim.lease == "w1#1@1" and [t.id for t in claim.tasks] == ["1", "2", "3"]
    assert q.task("2").package == "1"
    assert [t.id for t in q.claim("w1", lease_ms=5000, count=100).tasks] == ["4", "5", "6"]


def test_a_package_is_not_mixed_into_a_batch_of_single_tasks(make_queue):
    q = make_queue()
    generate(q, 2)
    generate(q, 2, package_size=2)
    first = q.claim("w1", lease_ms=5000, count=10)
    assert [t.id for t in first.tasks] == ["1", "2"] and "@" not in first.lease
    assert [t.id for t in q.claim("w1", lease_ms=5000, count=10).tasks] == ["3", "4"]


def test_expired_package_returns_only_its_unfinished_tasks_as_a_package(make_queue):
    q = make_queue()
    generate(q, 4, package_size=4)
    claim = q.claim("w1", lease_ms=40)
    q.settle("w1", [Settlement(t, claim.lease, "done", "null") for t in ("1", "2")], lease_ms=1000)
    time.sleep(0.1)  # Redis expires the lease key
    assert q.reap(now=time.time() + 60).returned == 2
    assert q.client.lrange(q.keys.ready, 0, -1) == ["pkg:1"]
    again = q.claim("w2", lease_ms=5000)
    assert [(t.id, t.attempt) for t in again.tasks] == [("3", 2), ("4", 2)]
    assert [q.task(i).status for i in ("1", "2")] == [Status.DONE, Status.DONE]


def test_enqueue_wakes_an_idle_worker(make_queue):
    q = make_queue()
    q.client.delete(q.keys.signal)
    generate(q, 1)
    assert q.wait_for_work(0.5)


def test_an_idle_worker_sends_its_claim_with_its_blpop_so_waking_costs_no_extra_round_trip(real_client, queue_name):
    """While the worker blocks, its claim already waits in Redis's input buffer for that client."""
    q = Queue(real_client, queue_name, own_connection=True)
    claims: list = []
    waiter = threading.Thread(target=lambda: claims.append(q.wait_then_claim("w1", 5.0, lease_ms=5000)))
    waiter.start()
    try:
        deadline = time.monotonic() + 5
        blocked: list[dict] = []
        while not blocked and time.monotonic() < deadline:
            blocked = [c for c in real_client.client_list() if c["cmd"] == "blpop" and "b" in c["flags"]]
        assert blocked, "the worker never blocked on its wake-up signal"
        assert int(blocked[0]["qbuf"]) > 0  # the EVALSHA claim, sent with the BLPOP
        generate(q, 1)
    finally:
        waiter.join(10)
        q.close()
    assert [t.id for t in claims[0].tasks] == ["1"]
    assert q.task("1").status is Status.RUNNING


def test_a_claim_sent_before_a_wait_reads_redis_clock_so_a_retry_due_during_the_wait_is_taken(real_client, queue_name):
    q = Queue(real_client, queue_name, own_connection=True)
    try:
        generate(q, 1)
        settle_one(q, q.claim("w1", lease_ms=5000), outcome="retry", value="boom", backoff_s=0.3)
        assert q.claim("w1", lease_ms=5000).tasks == []  # not due yet
        real_client.delete(q.keys.signal)  # the enqueue's wake-up token: nothing is to wake the wait
        claim = q.wait_then_claim("w1", 0.4, lease_ms=5000)  # nothing wakes it: the wait times out
    finally:
        q.close()
    assert [(t.id, t.attempt) for t in claim.tasks] == [("1", 2)]
    deadline = real_client.zscore(q.keys.inflight, claim.lease)
    assert abs(deadline - (float(real_client.time()[0]) + 5)) < 2  # Redis's clock + the lease, not a stale one


def test_wait_then_claim_without_a_private_connection_waits_then_claims(make_queue):
    q = make_queue()
    generate(q, 1)
    claim = q.wait_then_claim("w1", 0.5, lease_ms=5000)
    assert [t.id for t in claim.tasks] == ["1"]


def test_requests_sent_ahead_keep_their_order_when_the_server_lacks_the_scripts(client, queue_name):
    """On both backends, the same pipelined transport. A fresh private connection loads every
    script first; after a SCRIPT FLUSH, requests that failed are sent again in their order,
    after the replies sent before them are read."""
    q = Queue(client, queue_name, own_connection=True)
    try:
        generate(q, 6)
        client.script_flush()
        tickets = [q.claim_nowait("w1", lease_ms=5000) for _ in range(3)]
        assert [[t.id for t in q.result(k).tasks] for k in tickets] == [["1"], ["2"], ["3"]]
        client.script_flush()
        tickets = [q.claim_nowait("w1", lease_ms=5000) for _ in range(3)]
        assert [[t.id for t in q.result(k).tasks] for k in tickets] == [["4"], ["5"], ["6"]]
    finally:
        q.close()


def test_a_producer_reopens_its_connection_when_the_server_closed_it_while_idle(real_client, queue_name):
    """Real Redis only: fakeredis's connection cannot tell that it was killed until it next
    writes (its can_read sees no closed socket), so the check before sending finds nothing."""
    q = Queue(real_client, queue_name)
    generate(q, 1)
    assert real_client.client_kill_filter(_type="normal", skipme=True) >= 1  # as a restart or idle timeout would
    generate(q, 1)
    assert q.counters()["total"] == 2
    q.close()


def test_one_queue_enqueues_from_many_threads_each_down_its_own_connection(real_client, queue_name):
    q = Queue(real_client, queue_name)
    errors: list[BaseException] = []

    def produce(thread: int) -> None:
        try:
            for i in range(100):
                q.enqueue([Task(id=f"t{thread}-{i}", kind="noop")])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert q.counters()["total"] == 400
    assert real_client.llen(q.keys.ready) == 400


def test_a_forked_child_enqueues_down_a_connection_of_its_own(real_client, queue_name):
    """A handler in a forked worker may enqueue through a Queue made before the fork: parent and
    child then enqueue at once, and each must talk to Redis down its own socket."""
    q = Queue(real_client, queue_name)
    generate(q, 1)  # the parent's connection is open now
    parents_socket = q._producer.conn.conn._sock.getsockname()

    def child_main() -> None:
        generate(q, 200)
        os._exit(0 if q._producer.conn.conn._sock.getsockname() != parents_socket else 1)

    child = multiprocessing.get_context("fork").Process(target=child_main)
    child.start()
    for _ in range(200):
        generate(q, 1)
    child.join(30)
    assert child.exitcode == 0
    assert q._producer.conn.conn._sock.getsockname() == parents_socket
    assert q.counters()["total"] == 401
    q.close()


def test_a_heartbeat_renews_a_workers_claims_made_ahead_before_their_replies_are_read(real_client, queue_name):
    q = Queue(real_client, queue_name, own_connection=True)
    try:
        generate(q, 1)
        since = q.leases_issued()
        ticket = q.claim_nowait("w1", lease_ms=500)  # its reply, and so its lease id, stays unread
        for _ in range(12):  # 1.2 s: more than twice the lease
            time.sleep(0.1)  # time for the lease to run out, were it not renewed: the behaviour under test
            assert q.heartbeat([], 500, worker="w1", since=since) == []
        claim = q.result(ticket)
    finally:
        q.close()
    assert [t.id for t in claim.tasks] == ["1"]
    assert real_client.exists(q.keys.lease(claim.lease))
    assert q.reap(now=time.time() + 60).returned == 0


def test_a_heartbeat_renews_neither_an_earlier_worker_of_the_same_id_nor_a_worker_whose_id_it_prefixes(
    real_client, queue_name
):
    q = Queue(real_client, queue_name)
    generate(q, 3)
    crashed = q.claim("w1", lease_ms=400)  # left by a worker "w1" that died and was replaced
    since = q.leases_issued()  # where the replacement starts
    other = q.claim("w10", lease_ms=400)
    mine = q.claim("w1", lease_ms=400)
    for _ in range(8):
        time.sleep(0.1)  # time for the leases to run out unless renewed: the behaviour under test
        q.heartbeat([], 400, worker="w1", since=since)
    assert not real_client.exists(q.keys.lease(crashed.lease))
    assert not real_client.exists(q.keys.lease(other.lease))
    assert real_client.exists(q.keys.lease(mine.lease))
    assert q.reap(now=time.time() + 60).returned == 2


def test_purge_deletes_only_this_queues_keys(make_queue, queue_name):
    mine, other = make_queue(), make_queue(queue_name + "-other")
    generate(mine, 3)
    generate(other, 3)
    q_keys = set(mine.client.scan_iter(match=mine.keys.pattern))
    assert mine.purge() == len(q_keys)
    assert list(mine.client.scan_iter(match=mine.keys.pattern)) == []
    assert other.client.llen(other.keys.ready) == 3


def test_a_finished_run_leaves_exactly_the_documented_keys(make_queue, make_worker):
    q = make_queue()
    generate(q, 3)
    make_worker().run()
    k = q.keys
    expected = {k.task(i) for i in ("1", "2", "3")} | {
        k.stats,
        k.events,
        k.finishes,
        k.next_id,
        k.signal,
        k.ledger,
        k.done_index,
    }
    # No lease, held set, package or inflight entry outlives its claim.
    assert set(q.client.scan_iter(match=k.pattern)) == expected


def test_every_key_of_a_queue_shares_one_cluster_hash_tag():
    k = Keys("demo")
    names = k.script_keys() + [
        k.task("7"),
        k.lease("w#1"),
        k.held("w#1"),
        k.package("3"),
        k.next_id,
        k.finishes,
        k.finished_channel,
        k.progress_channel,
    ]
    assert all(name.startswith("wqsim:{demo}:") for name in names)


def test_a_task_key_reads_back_as_its_id():
    k = Keys("demo")
    assert k.task_id_of(k.task("a.b-7")) == "a.b-7"


@pytest.mark.parametrize("bad", ["", "has space", "star*", "{brace}", "x" * 65, 7])
def test_bad_queue_names_are_rejected_naming_the_value(bad):
    with pytest.raises(ValueError, match="queue name"):
        Keys(bad)  # type: ignore[arg-type]


def test_enqueued_task_reads_back_as_the_task_that_was_made(make_queue):
    q = make_queue()
    q.enqueue(make_tasks(["9"], kind="sleep", payload={"duration_ms": 3}, max_attempts=4))
    parsed = q.task("9")
    assert (parsed.id, parsed.kind, parsed.payload, parsed.max_attempts) == ("9", "sleep", {"duration_ms": 3}, 4)
    assert parsed.created_at == parsed.enqueued_at is not None


@pytest.mark.parametrize("bad", ["a:b", "x#1", "has space", ""])
def test_task_ids_that_would_break_key_or_lease_syntax_are_rejected(make_queue, bad):
    q = make_queue()
    with pytest.raises(ValueError, match="task id must be"):
        q.enqueue(make_tasks([bad]))
    assert q.counters() == {}  # nothing was written


def test_package_entries_and_lease_workers_are_spelled_in_wqsim_keys_alone():
    """The Lua scripts take the package-entry prefix from wqsim.keys; worker_of reads a lease id."""
    from wqsim.keys import PACKAGE_ENTRY_PREFIX, package_entry, worker_of
    from wqsim.scripts import SCRIPT_NAMES, full_source, source

    assert package_entry("7") == PACKAGE_ENTRY_PREFIX + "7" == Keys.package_entry("7")
    assert all(PACKAGE_ENTRY_PREFIX not in source(name) for name in (*SCRIPT_NAMES, "_lib"))
    assert all(repr(PACKAGE_ENTRY_PREFIX) in full_source(name) for name in SCRIPT_NAMES)
    assert [worker_of(lease) for lease in ("w1#3", "w1#3@9", "")] == ["w1", "w1", ""]
