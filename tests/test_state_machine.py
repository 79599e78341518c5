"""Property-based tests of the Lua state machine (claim, settle, heartbeat, reap).

Hypothesis interleaves operations from several simulated workers against a
small Python model of the queue, on fakeredis and a real redis-server alike
(the ``client`` fixture). After every step the Redis state must agree with
the model and with the invariants the design promises:

* every task is in exactly one state, and the containers agree with it:
  queued <-> exactly once in the ready list (in FIFO order, retries and
  reaped tasks at the front); running <-> held by exactly one claim (lease)
  in the inflight index, whose key exists unless it expired and awaits the
  reaper; scheduled <-> in the delayed set; dead <-> exactly once in the dead
  list; done -> in none of them;
* a task is completed at most once, and once done it never comes back;
* a settle under a lease that no longer holds the task is rejected and
  changes nothing (but the ``rejected`` counter and one event);
* the stats counters, the event stream and ``wqsim.audit`` agree with the
  model (lost == 0, completed_twice == 0);
* once every task is terminal, claim reports the queue drained.

Leases are long (60 s) so that none really expires during a test; an expiry
is simulated by DELeting the lease key, which is exactly what Redis does when
the key's PX TTL runs out, without sleeping. Time is a fake clock that the
machine advances, so delayed retries become due on demand.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest
import redis
from helpers import FakeClock
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from wqsim import Queue, Settlement, audit, generate

LEASE_MS = 60_000  # never really expires during a test; expiry is simulated with DEL
WORKERS = ("w1", "w2", "w3")
MAX_TASKS = 12
OUTCOMES = st.sampled_from(["done", "retry", "dead", "retry"])  # retries lead to the richer paths
BACKOFFS = st.sampled_from([0.0, 0.5, 2.0])
TERMINAL = ("done", "dead")

SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)


@dataclass
class ModelTask:
    id: str
    max_attempts: int
    status: str = "queued"
    attempt: int = 0
    lease: str | None = None  # the claim holding it while running
    due: float | None = None  # score in the delayed set
    completions: int = 0


@dataclass
class ModelLease:
    worker: str
    deadline: float  # score in the inflight index
    held: set[str] = field(default_factory=set)
    alive: bool = True  # the lease key exists


def by_id(task_id: str) -> tuple[int, str]:
    return (int(task_id), "") if task_id.isdigit() else (0, task_id)


class QueueStateMachine(RuleBasedStateMachine):
    """One fresh queue per example, driven through wqsim.Queue and checked against a model."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__()
        self.client = client
        self.clock = FakeClock()
        self.q = Queue(client, "sm" + uuid.uuid4().hex[:12], clock=self.clock)
        self.tasks: dict[str, ModelTask] = {}
        self.leases: dict[str, ModelLease] = {}  # every lease still in the inflight index
        self.ready: list[str] = []  # same orientation as the Redis list: LPUSH at 0, RPOP from the end
        self.held: dict[str, dict[str, str]] = {
            w: {} for w in WORKERS
        }  # what each worker believes it holds: id -> lease
        self.issued: list[tuple[str, str]] = []  # every (task id, lease) ever handed out
        self.ever_done: set[str] = set()
        self.stats: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.steps = 0
        self.finished = False

    def teardown(self) -> None:
        self.q.purge()

    # -- the model ---------------------------------------------------------------
    def all_terminal(self) -> bool:
        return bool(self.tasks) and all(t.status in TERMINAL for t in self.tasks.values())

    def in_status(self, status: str) -> list[ModelTask]:
        return [t for t in self.tasks.values() if t.status == status]

    def drop_lease(self, lease: str) -> None:
        for task_id in self.leases.pop(lease).held:
            self.tasks[task_id].lease = None

    def model_promote(self, now: float) -> None:
        """promote_due: due retries go to the front of the ready list, by (due, id) as ZRANGEBYSCORE orders them."""
        for t in sorted((t for t in self.in_status("scheduled") if t.due <= now), key=lambda t: (t.due, t.id)):
            t.status, t.due = "queued", None
            self.ready.append(t.id)

    def model_claim(self, worker: str, count: int, reuse: str | None = None):
        now = self.clock.now
        self.model_promote(now)
        claimed: list[str] = []
        while len(claimed) < count and self.ready:
            claimed.append(self.ready.pop())
        lease = None
        if claimed:
            if reuse is not None:
                lease = reuse  # renewed only when less than half is left: never, with 60 s leases here
            else:
                self.stats["leases"] += 1
                lease = f"{worker}#{self.stats['leases']}"
                self.leases[lease] = ModelLease(worker, now + LEASE_MS / 1000)
            for task_id in claimed:
                t = self.tasks[task_id]
                t.attempt += 1
                t.status, t.lease = "running", lease
                self.leases[lease].held.add(task_id)
                self.held[worker][task_id] = lease
                self.issued.append((task_id, lease))
        elif reuse is not None:
            self.drop_lease(reuse)
        drained = not claimed and self.all_terminal()
        next_due = None if claimed else min((t.due for t in self.in_status("scheduled")), default=None)
        return claimed, lease, drained, next_due

    def model_settle(
        self, settlements: list[Settlement], backoff: float, claim_next: int
    ) -> tuple[list[str], str | None]:
        now = self.clock.now
        accepted: set[int] = set()
        reuse = None
        order: list[str] = []
        for s in settlements:
            if s.lease not in order:
                order.append(s.lease)
        for lease in order:
            m = self.leases.get(lease)
            if m is None or not m.alive:
                continue
            for i, s in enumerate(settlements):
                if s.lease == lease and s.task_id in m.held:
                    m.held.discard(s.task_id)
                    accepted.add(i)
            if not m.held:
                if reuse is None and claim_next > 0 and "@" not in lease:
                    reuse = lease
                else:
                    del self.leases[lease]
        rejected, done = [], 0
        for i, s in enumerate(settlements):
            t = self.tasks[s.task_id]
            if i not in accepted:
                rejected.append(s.task_id)
                self.stats["rejected"] += 1
                self.events["rejected"] += 1
                continue
            t.lease = None
            if s.outcome == "done":
                t.status = "done"
                t.completions += 1
                self.ever_done.add(t.id)
                done += 1
            elif s.outcome == "retry" and t.attempt < t.max_attempts:
                t.status, t.due = "scheduled", now + backoff
                self.stats["retried"] += 1
                self.events["retry"] += 1
            else:
                t.status = "dead"
                self.stats["dead"] += 1
                self.events["dead"] += 1
        if done:
            self.stats["done"] += done
            self.events["done"] += 1  # one entry per settle call lists every task it finished
        return rejected, reuse

    # -- operations, each checked against the model --------------------------------
    def check_claim_reply(self, reply, expected) -> None:
        claimed, lease, drained, next_due = expected
        assert [c.id for c in reply.tasks] == claimed
        assert reply.lease == lease
        assert [c.attempt for c in reply.tasks] == [self.tasks[i].attempt for i in claimed]
        assert reply.drained == drained
        assert reply.next_due == next_due

    def do_claim(self, worker: str, count: int) -> None:
        reply = self.q.claim(worker, LEASE_MS, count)
        self.check_claim_reply(reply, self.model_claim(worker, count))

    def do_settle(self, worker: str, settlements: list[Settlement], claim_next: int = 0, backoff: float = 0.0):
        reply = self.q.settle(worker, settlements, LEASE_MS, claim_next=claim_next, backoff_s=backoff)
        expected_rejected, reuse = self.model_settle(settlements, backoff, claim_next)
        assert reply.rejected == expected_rejected
        self.check_claim_reply(reply, self.model_claim(worker, claim_next, reuse))
        return reply

    def do_reap(self) -> None:
        now = self.clock.now + 10**6  # beyond every lease deadline: every inflight entry is a candidate
        result = self.q.reap(now=now)
        returned = buried = 0
        for lease in sorted(self.leases, key=lambda name: (self.leases[name].deadline, name)):
            m = self.leases[lease]
            if m.alive:
                continue  # the lease key still exists: the lease is live, whatever the deadline says
            back = []
            for task_id in sorted(m.held, key=by_id):
                t = self.tasks[task_id]
                t.lease = None
                self.stats["expired"] += 1
                if t.attempt >= t.max_attempts:
                    t.status = "dead"
                    self.stats["dead"] += 1
                    self.events["dead"] += 1
                    buried += 1
                else:
                    t.status = "queued"
                    self.events["expired"] += 1
                    back.append(task_id)
            for task_id in reversed(back):  # the smallest id ends nearest the RPOP end
                self.ready.append(task_id)
            returned += len(back)
            del self.leases[lease]
        assert (result.returned, result.buried) == (returned, buried)

    def dump(self) -> dict:
        """Every key of the queue but the event stream and the wake-up signal, to compare before and after."""
        out = {}
        for key in self.client.scan_iter(match=self.q.keys.pattern):
            kind = self.client.type(key)
            if key in (self.q.keys.events, self.q.keys.signal):
                continue
            if kind == "hash":
                out[key] = self.client.hgetall(key)
            elif kind == "list":
                out[key] = self.client.lrange(key, 0, -1)
            elif kind == "zset":
                out[key] = self.client.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                out[key] = self.client.smembers(key)
            else:
                out[key] = self.client.get(key)
        return out

    # -- rules ---------------------------------------------------------------------
    @initialize(
        count=st.integers(1, 6),
        max_attempts=st.integers(1, 4),
        start=st.sampled_from([1_000_000.0, 1_700_000_000.123456]),
    )
    def enqueue_a_first_batch(self, count: int, max_attempts: int, start: float) -> None:
        self.clock.now = start
        self.enqueue(count, max_attempts)

    @precondition(lambda self: len(self.tasks) < MAX_TASKS)
    @rule(count=st.integers(1, 3), max_attempts=st.integers(1, 3))
    def enqueue(self, count: int, max_attempts: int) -> None:
        ids = generate(self.q, count, max_attempts=max_attempts)
        for task_id in ids:  # one LPUSH per id, in order: the first id ends up nearest the RPOP end
            self.tasks[task_id] = ModelTask(task_id, max_attempts)
            self.ready.insert(0, task_id)
        self.stats["total"] += count
        self.stats["created"] = 1  # the sentinel every enqueue writes (see wqsim.storage)

    @rule(worker=st.sampled_from(WORKERS), count=st.integers(1, 3))
    def claim(self, worker: str, count: int) -> None:
        self.do_claim(worker, count)

    @precondition(lambda self: any(self.held.values()))
    @rule(
        pick=st.integers(0, 30),
        choices=st.lists(st.tuples(st.integers(0, 30), OUTCOMES), min_size=1, max_size=3),
        claim_next=st.integers(0, 2),
        backoff=BACKOFFS,
    )
    def settle_held_claims(self, pick, choices, claim_next, backoff) -> None:
        """A worker reports outcomes for some of its claims (a repeated pick settles one task twice in one call)."""
        workers = [w for w in WORKERS if self.held[w]]
        worker = workers[pick % len(workers)]
        held = sorted(self.held[worker].items())
        settlements = []
        for index, outcome in choices:
            task_id, lease = held[index % len(held)]
            value = json.dumps({"by": worker}) if outcome == "done" else f"{outcome} from {worker}"
            settlements.append(Settlement(task_id, lease, outcome, value))
        for s in settlements:
            self.held[worker].pop(s.task_id, None)
        self.do_settle(worker, settlements, claim_next, backoff)

    @precondition(lambda self: any(self.held.values()))
    @rule(pick=st.integers(0, 30), first=OUTCOMES, second=OUTCOMES)
    def settle_the_same_claim_twice(self, pick, first, second) -> None:
        """Duplicate completion: the second report of one attempt must be rejected and change nothing."""
        claims = sorted((w, task_id, lease) for w in WORKERS for task_id, lease in self.held[w].items())
        worker, task_id, lease = claims[pick % len(claims)]
        self.held[worker].pop(task_id)
        self.do_settle(worker, [Settlement(task_id, lease, first, "1")])
        self.settle_under_a_lease_that_no_longer_holds_the_task(worker, task_id, lease, second)

    @precondition(lambda self: bool(self.issued))
    @rule(pick=st.integers(0, 100), outcome=OUTCOMES, forge=st.booleans(), worker=st.sampled_from(WORKERS))
    def settle_with_a_stale_or_forged_lease(self, pick, outcome, forge, worker) -> None:
        """A late report from an earlier claim, or a lease id that never held this task."""
        task_id, lease = self.issued[pick % len(self.issued)]
        if forge:
            lease = f"{worker}#999"
        m = self.leases.get(lease)
        if m is not None and m.alive and task_id in m.held:
            return  # still the live claim: that is a legitimate settle, covered elsewhere
        self.settle_under_a_lease_that_no_longer_holds_the_task(worker, task_id, lease, outcome)

    def settle_under_a_lease_that_no_longer_holds_the_task(self, worker, task_id, lease, outcome) -> None:
        due_now = any(t.due <= self.clock.now for t in self.in_status("scheduled"))
        before, rejected_before = self.dump(), self.q.counters().get("rejected", 0)
        reply = self.do_settle(worker, [Settlement(task_id, lease, outcome, "late")])
        assert reply.rejected == [task_id]
        assert self.q.counters().get("rejected", 0) == rejected_before + 1
        if not due_now:  # else the claim step of settle legitimately promotes due retries
            after = self.dump()
            before.pop(self.q.keys.stats), after.pop(self.q.keys.stats)
            assert after == before, "a rejected settle changed the queue"

    @precondition(lambda self: any(m.alive for m in self.leases.values()))
    @rule(pick=st.integers(0, 30))
    def expire_a_lease(self, pick) -> None:
        # Simulates the lease key's PX TTL running out: Redis deletes an expired key,
        # so DEL is the same state change, without sleeping through a real lease.
        live = sorted(name for name, m in self.leases.items() if m.alive)
        lease = live[pick % len(live)]
        assert self.client.delete(self.q.keys.lease(lease)) == 1
        self.leases[lease].alive = False

    @precondition(lambda self: bool(self.leases))
    @rule()
    def reap(self) -> None:
        self.do_reap()

    @precondition(lambda self: any(self.held.values()))
    @rule(pick=st.integers(0, 30))
    def a_worker_crashes_and_all_its_leases_expire(self, pick) -> None:
        workers = [w for w in WORKERS if self.held[w]]
        worker = workers[pick % len(workers)]
        for lease in set(self.held[worker].values()):
            m = self.leases.get(lease)
            if m is not None and m.alive:
                self.client.delete(self.q.keys.lease(lease))  # as the TTL would, see expire_a_lease
                m.alive = False
        self.held[worker] = {}

    @precondition(lambda self: any(self.held.values()))
    @rule(pick=st.integers(0, 30))
    def heartbeat(self, pick) -> None:
        workers = [w for w in WORKERS if self.held[w]]
        worker = workers[pick % len(workers)]
        leases = sorted(set(self.held[worker].values()))
        lost = self.q.heartbeat(leases, LEASE_MS)
        assert lost == [name for name in leases if not (name in self.leases and self.leases[name].alive)]
        self.stats["heartbeats"] += 1
        self.stats["renewed"] += len(leases) - len(lost)
        for name in leases:
            if name in self.leases and self.leases[name].alive:
                self.leases[name].deadline = self.clock.now + LEASE_MS / 1000
                assert 0 < self.client.pttl(self.q.keys.lease(name)) <= LEASE_MS

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.5]))
    def advance_the_clock(self, dt: float) -> None:
        self.clock.now += dt

    @precondition(lambda self: bool(self.in_status("scheduled")))
    @rule()
    def advance_the_clock_to_the_next_due_retry(self) -> None:
        self.clock.now = min(t.due for t in self.in_status("scheduled"))  # exactly due: ZRANGEBYSCORE is inclusive

    @precondition(lambda self: self.steps >= 20 and not self.finished)  # late and once: most steps stay busy
    @rule()
    def finish_everything(self) -> None:
        """Liveness: from any state, reaping, waiting out backoffs and settling 'done' drains the queue."""
        self.finished = True
        for _ in range(4 * MAX_TASKS * 3):
            if self.all_terminal():
                break
            for worker in WORKERS:
                live = sorted(
                    (task_id, lease)
                    for task_id, lease in self.held[worker].items()
                    if lease in self.leases and self.leases[lease].alive and task_id in self.leases[lease].held
                )
                self.held[worker].clear()
                if live:
                    self.do_settle(worker, [Settlement(i, lease, "done", "1") for i, lease in live])
            self.do_reap()
            scheduled = self.in_status("scheduled")
            if scheduled:
                self.clock.now = max(self.clock.now, max(t.due for t in scheduled))
            self.do_claim("w1", MAX_TASKS)
        assert self.all_terminal()
        reply = self.q.claim("w2", LEASE_MS, 1)
        assert (reply.tasks, reply.drained) == ([], True)

    # -- invariants ----------------------------------------------------------------
    @invariant()
    def redis_agrees_with_the_model_and_every_invariant_holds(self) -> None:
        self.steps += 1
        k = self.q.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.lrange(k.ready, 0, -1)
        pipe.zrange(k.inflight, 0, -1, withscores=True)
        pipe.zrange(k.delayed, 0, -1, withscores=True)
        pipe.lrange(k.dead, 0, -1)
        ready, inflight, delayed, dead = pipe.execute()
        inflight, delayed = dict(inflight), dict(delayed)

        # Every task is in exactly one state, the one the model predicts.
        statuses = {task_id: s.value for task_id, s in self.q.statuses().items()}
        assert statuses == {t.id: t.status for t in self.tasks.values()}

        # The containers agree with the statuses.
        assert ready == self.ready  # queued <-> exactly once in ready, in FIFO order
        assert Counter(ready) == Counter(t.id for t in self.in_status("queued"))
        assert delayed == {t.id: t.due for t in self.in_status("scheduled")}
        assert Counter(dead) == Counter(t.id for t in self.in_status("dead"))  # each dead task exactly once
        # running <-> held by exactly one claim in the inflight index
        assert inflight == {name: m.deadline for name, m in self.leases.items()}
        for name, m in self.leases.items():
            assert self.client.smembers(k.held(name)) == m.held
        holders = Counter(i for m in self.leases.values() for i in m.held)
        assert holders == Counter(t.id for t in self.in_status("running"))
        for task_id in self.ever_done:  # never both recorded done and returned anywhere
            assert statuses[task_id] == "done"
            assert task_id not in ready and task_id not in delayed and task_id not in dead and task_id not in holders

        # Lease keys: exactly the claims whose lease has not expired, holding the worker's id.
        lease_keys = sorted(self.client.scan_iter(match=k.prefix + "lease:*"))
        values = self.client.mget(lease_keys) if lease_keys else []
        leases = dict(zip((key.split(":lease:", 1)[1] for key in lease_keys), values, strict=False))
        assert leases == {name: m.worker for name, m in self.leases.items() if m.alive}

        # Attempts as the model counts them; running tasks name their claim.
        pipe = self.client.pipeline(transaction=False)
        for task_id in self.tasks:
            pipe.hmget(k.task(task_id), ["attempt", "lease"])
        for task_id, (attempt, lease) in zip(self.tasks, pipe.execute(), strict=False):
            t = self.tasks[task_id]
            assert int(attempt or 0) == t.attempt
            if t.status == "running":
                assert lease == t.lease

        # Counters and the event stream agree with what happened; nothing completed twice.
        counters = {name: n for name, n in self.q.counters().items() if n}
        assert counters == {name: n for name, n in self.stats.items() if n}
        assert counters["total"] == len(self.tasks)
        assert counters.get("done", 0) == statuses_count(statuses, "done")
        assert counters.get("dead", 0) == statuses_count(statuses, "dead")
        entries = [f for _, f in self.client.xrange(k.events)]
        assert Counter(f["event"] for f in entries) == +self.events
        done_ids = Counter(i for f in entries if f["event"] == "done" for i in f["id"].split(" "))
        assert done_ids == Counter({t.id: t.completions for t in self.tasks.values() if t.completions})
        assert all(n == 1 for n in done_ids.values())

        # The audit sees the same, and finds nothing lost or completed twice.
        a = audit(self.q)
        assert (a.lost, a.completed_twice) == (0, 0), (a.lost_ids, a.twice_ids)
        assert a.generated == len(self.tasks)
        assert (a.done, a.dead, a.queued, a.running, a.scheduled) == tuple(
            statuses_count(statuses, s) for s in ("done", "dead", "queued", "running", "scheduled")
        )
        assert a.executions == sum(t.attempt for t in self.tasks.values())
        assert (a.completions, a.rejected, a.expired) == (
            sum(done_ids.values()),
            self.events["rejected"],
            self.stats["expired"],
        )

        # Once every task is terminal, claim says so (and hands out nothing).
        if self.all_terminal():
            reply = self.q.claim("probe", LEASE_MS, 1)
            assert (reply.tasks, reply.drained, reply.next_due) == ([], True, None)


def statuses_count(statuses: dict[str, str], status: str) -> int:
    return sum(1 for s in statuses.values() if s == status)


@pytest.mark.slow
def test_random_interleavings_of_claims_settles_expiries_heartbeats_and_reaps_keep_the_queue_consistent(client):
    run_state_machine_as_test(lambda: QueueStateMachine(client), settings=SETTINGS)
