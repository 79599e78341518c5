"""The engine in virtual time: the same policies as the Lua scripts and the worker loop, on SimPy.

What is modelled, and how:

- **Redis** is one thread that serves calls in the order they arrive. A call
  sent at ``t`` arrives half a round trip later, starts when the thread is
  free, holds it for its cost (``CostProfile.call_s``) and is answered half a
  round trip after it ends. Every change of state goes through a call, and all
  calls travel the same distance, so they run in the order they are sent. The
  model therefore applies a call's effect when it is sent, stamped with the
  time Redis runs it, and learns its reply time by arithmetic: no event is
  spent on Redis itself, which is what lets a million tasks run in seconds.
- **Workers** follow ``Worker.run``: claim ``batch_size`` tasks, run them,
  settle and claim in one call; claims made ahead (``prefetch``) overlap round
  trips with work under the same rule as the real worker (``_may_claim_ahead``);
  results inside a batch are flushed every ``flush_interval_s``; an idle worker
  waits for a wake-up token, or until a retry falls due.
- **CPU**: with ``cores`` > 0 the workers' own work, the listener's and
  Redis's share that many cores, first come first served, as on the machine
  the profile was measured on. With 0, each has a core of its own (workers on
  many hosts).
- **Leases** are renewed by heartbeats while their worker runs; one that
  crashes or hangs stops renewing, its lease expires ``lease_s`` after the last
  ping, the reaper (every ``reaper_interval_s``) returns its tasks, and a late
  result is rejected: the fencing of settle.lua.
- **Chaos** draws the same faults as a real run (``wqsim.chaos.draw`` on the
  same seed, task ids and attempts); a crashed worker is replaced after
  ``worker_start_s``, as the pool's supervisor does.
- **Graphs** release a dependent when its last prerequisite is done, and
  cancel it (with its own dependents) when one ends dead, unless failures are allowed.

What is not: Redis running out of memory, network partitions, the listener.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from functools import partial

import simpy

from ..chaos import draw
from ..config import RunConfig
from ..generator import arrival_offsets, service_durations
from ..graph import example
from .profile import CostProfile, cold

# Task states: the Status values, as small ints for a million of them.
QUEUED, RUNNING, SCHEDULED, WAITING, DONE, DEAD, CANCELLED = range(7)
STATUS_NAMES = ("queued", "running", "scheduled", "waiting", "done", "dead", "cancelled")
TERMINAL = (DONE, DEAD, CANCELLED)

Event = simpy.events.Event
Process = Generator[Event, object, None]  # a SimPy process: yields events, returns nothing
Steps = Generator[Event, object, None]  # part of a process, run with ``yield from``


@dataclass(eq=False)
class Lease:
    """One claim: its tasks, whose they are, and when it expires (inf while its worker pings)."""

    holder: WorkerState
    claimed_at: float
    tasks: set[int]
    expires_at: float = math.inf
    reaped: bool = False

    def alive_at(self, t: float) -> bool:
        return not self.reaped and t < self.expires_at


@dataclass
class Claim:
    """A claim's reply, as the worker reads it."""

    tasks: list[int] = field(default_factory=list)
    lease: Lease | None = None
    backlog: int = 0
    in_flight: int = 0
    drained: bool = False
    next_due: float | None = None


@dataclass
class Pending:
    """A request sent and not yet answered: its reply arrives at ``reply_at``."""

    reply_at: float
    claim: Claim


@dataclass
class Settlement:
    task: int
    lease: Lease
    outcome: str  # done, retry, dead
    started_at: float
    finished_at: float
    error: str = ""


def _succeed(event: Event, _: object) -> None:
    """Trigger ``event`` unless something else has (a waiter that timed out marks its own)."""
    if not event.triggered:
        event.succeed()


class Cores:
    """CPUs shared first come, first served; ``count`` 0 means one per caller (no waiting)."""

    def __init__(self, count: int) -> None:
        self.free = [0.0] * count  # a heap of the times each core is next free

    def run(self, at: float, seconds: float) -> float:
        """A burst of ``seconds`` of CPU wanted from ``at``: when it ends."""
        if not self.free or seconds <= 0:
            return at + seconds
        start = max(at, heapq.heappop(self.free))
        heapq.heappush(self.free, start + seconds)
        return start + seconds


class Records:
    """The attempts, column by column (a million rows as lists, not dicts)."""

    def __init__(self) -> None:
        self.task: list[int] = []
        self.attempt: list[int] = []
        self.worker: list[str] = []
        self.started: list[float] = []
        self.finished: list[float] = []
        self.status: list[str] = []
        self.error: list[str] = []

    def add(
        self, task: int, attempt: int, worker: str, started: float, finished: float, status: str, error: str
    ) -> None:
        self.task.append(task)
        self.attempt.append(attempt)
        self.worker.append(worker)
        self.started.append(started)
        self.finished.append(finished)
        self.status.append(status)
        self.error.append(error)


class WorkerState:
    """One worker process's life: its id, whether it is frozen (a hang) or dead (a crash)."""

    def __init__(self, worker_id: str) -> None:
        self.id = worker_id
        self.held: set[Lease] = set()
        self.dead = False
        self.slept_s = 0.0  # how long its last handler slept: its next call may be a cold one
        self.busy_until = 0.0  # its CPU is sending a request until then


class Model:
    """One simulated run of ``config`` with the costs of ``profile``; ``run()`` it once."""

    def __init__(self, config: RunConfig, profile: CostProfile, cores: int | None = None) -> None:
        self.config = config
        self.profile = profile
        self.wcfg = config.worker
        self.chaos = config.chaos
        self.env = simpy.Environment()
        self.half_rtt = profile.round_trip_s / 2
        self.wake_delay = profile.wake_delay_s()
        self.sleeps = config.kind == "sleep"  # handlers block (and the CPU idles) while they run
        self.handlers_sleep = self.sleeps and (config.duration_ms > 0 or config.graph is not None)
        # The workers, the listener and Redis's one thread share the cores.
        self.cores = Cores(profile.cores if cores is None else cores)
        self.redis_free_at = 0.0
        self.redis_busy_s = 0.0
        self.calls = 0
        # The queue's state, indexed by task number (0 .. n-1).
        tasks = self._tasks()
        n = len(tasks)
        self.ids = [t[0] for t in tasks]
        self.duration_s = [t[1] for t in tasks]
        self.status = [QUEUED] * n
        self.attempt = [0] * n
        self.enqueued_at = [math.nan] * n
        self.started_at = [math.nan] * n
        self.finished_at = [math.nan] * n
        self.worker_of = [""] * n
        self.lease_of: list[Lease | None] = [None] * n
        self.error = [""] * n
        index = {task_id: i for i, task_id in enumerate(self.ids)}
        self.dependents: list[list[int]] = [[] for _ in range(n)]
        self.missing = [0] * n  # prerequisites not yet done
        for i, (_, _, deps) in enumerate(tasks):
            for dep in deps:
                self.dependents[index[dep]].append(i)
            self.missing[i] = len(deps)
        self.ready: deque[int] = deque()  # the ready list: claims take from the right, as RPOP does
        self.delayed: list[tuple[float, int]] = []  # retries by due time
        self.doomed: list[tuple[float, int, Lease]] = []  # leases that stopped being renewed, by expiry
        self.terminal = 0
        self.producers = 0
        self.token = False  # the signal list's one wake-up token
        self.idle: deque[tuple[WorkerState, Event]] = deque()  # workers blocked waiting for a token
        self.live_leases = 0
        self.records = Records()
        # Counters for the report.
        self.executions = 0
        self.rejected = 0
        self.expired = 0
        self.reaped = 0
        self.restarts = 0
        self.heartbeats = 0
        self.ready_workers = 0
        self.workers_running = 0
        self.last_exit = 0.0
        self.all_exited = self.env.event()
        self.all_ready = self.env.event()
        self._serial = 0  # tie-breaker for the doomed heap
        self.worker_ids = [str(i) for i in range(1, config.workers + 1)]

    # -- the workload --------------------------------------------------------------

    def _tasks(self) -> list[tuple[str, float, tuple[str, ...]]]:
        """(id, handler seconds, prerequisites) per task, as the real run would enqueue them."""
        cfg = self.config
        if cfg.graph is not None:
            graph = example(cfg.graph, cfg.tasks, cfg.duration_ms, cfg.graph_seed)
            return [(t.id, self._handler_s(float(t.payload.get("duration_ms", 0))), t.depends_on) for t in graph]
        durations = service_durations(cfg.tasks, cfg.duration_ms, cfg.service, cfg.arrival_seed)
        return [(str(i), self._handler_s(d), ()) for i, d in enumerate(durations, 1)]

    def _handler_s(self, duration_ms: float) -> float:
        """A handler's time: nothing for noop; for sleep its duration and the overshoot (time.sleep(0) too)."""
        if self.config.kind == "noop":
            return 0.0
        return duration_ms / 1000 + self.profile.overshoot_s(duration_ms / 1000)

    # -- Redis: one thread, calls served in the order sent ---------------------------

    def _call(self, now: float, cost: float) -> tuple[float, float]:
        """Send a call costing ``cost`` of Redis's time at ``now``: (when it runs, when its reply is back)."""
        arrive = now + self.half_rtt
        start = max(arrive, self.redis_free_at)
        if arrive > self.redis_free_at:  # Redis was idle: waking it takes longer the longer it slept
            start += self.profile.redis_wake_s * cold(arrive - self.redis_free_at)
        end = self.cores.run(start, cost) if self.cores.free else start + cost
        self.redis_free_at = end
        self.redis_busy_s += cost
        self.calls += 1
        return end - cost, end + self.half_rtt

    def _cpu(self, now: float, seconds: float) -> float:
        return self.cores.run(now, seconds)

    def _wake(self, at: float) -> None:
        """Push the wake-up token at ``at`` (Redis time): the first blocked worker takes it."""
        while self.idle:
            worker, event = self.idle.popleft()
            if event.triggered or worker.dead:
                continue
            delay = max(at + self.wake_delay - self.env.now, 0.0)
            self.env.timeout(delay).callbacks.append(partial(_succeed, event))
            return
        self.token = True

    def _drained(self) -> bool:
        return self.terminal == len(self.ids) and self.producers == 0

    def _enqueue(self, task: int, at: float) -> None:
        self.status[task] = QUEUED
        self.enqueued_at[task] = at
        self.ready.appendleft(task)

    def _promote_due(self, at: float) -> None:
        while self.delayed and self.delayed[0][0] <= at:
            _, task = heapq.heappop(self.delayed)
            self.status[task] = QUEUED
            self.ready.appendleft(task)

    def claim(self, worker: WorkerState, at: float, count: int, settled: bool = False) -> Claim:
        """claim() of lua/_lib.lua, run at Redis time ``at``."""
        self._promote_due(at)
        claim = Claim()
        taken = claim.tasks
        while len(taken) < count and self.ready:
            task = self.ready.pop()
            self.status[task] = RUNNING
            self.attempt[task] += 1
            self.executions += 1
            self.worker_of[task] = worker.id
            taken.append(task)
        if taken:
            lease = Lease(worker, at, set(taken))
            for task in taken:
                self.lease_of[task] = lease
            claim.lease = lease
            self.live_leases += 1
            worker.held.add(lease)
            if not self.wcfg.heartbeat:
                self._doom(lease, at + self.wcfg.lease_s)
        claim.backlog = len(self.ready)
        if claim.backlog and not self.token:
            self._wake(at)
        claim.in_flight = self.live_leases
        if not taken:
            claim.drained = self._drained()
            if claim.drained and settled:
                self._wake(at)
            if self.delayed:
                claim.next_due = self.delayed[0][0]
        return claim

    def settle(self, worker: WorkerState, at: float, settlements: list[Settlement], backoff_s: float) -> None:
        """settle.lua at Redis time ``at``: outcomes under a live lease count; late ones are rejected.

        Terminal outcomes are published on the progress channel: the listener spends CPU on each message.
        """
        if self.cores.free and settlements:
            self.cores.run(at, self.profile.listener_message_s)
        for s in settlements:
            task, lease = s.task, s.lease
            if self.lease_of[task] is not lease or not lease.alive_at(at):
                self.rejected += 1
                continue
            self._release_from(lease, task)
            attempt = self.attempt[task]
            if s.outcome == "done":
                self._finish(task, DONE, s.started_at, s.finished_at, worker.id, "", at)
            elif s.outcome == "retry" and attempt < self.config.max_attempts:
                self.records.add(task, attempt, worker.id, s.started_at, s.finished_at, "retry", s.error)
                self.status[task] = SCHEDULED
                self.error[task] = s.error
                heapq.heappush(self.delayed, (at + backoff_s, task))
            else:
                self._finish(task, DEAD, s.started_at, s.finished_at, worker.id, s.error, at)

    def _release_from(self, lease: Lease, task: int) -> None:
        lease.tasks.discard(task)
        self.lease_of[task] = None
        if not lease.tasks:
            self._end_lease(lease)

    def _end_lease(self, lease: Lease) -> None:
        self.live_leases -= 1
        lease.expires_at = -1.0  # gone: nothing under it counts any more
        lease.holder.held.discard(lease)
        if self.wcfg.heartbeat:
            self.heartbeats += int((self.env.now - lease.claimed_at) / self.wcfg.ping_every_s)

    def _finish(
        self, task: int, status: int, started: float, finished: float, worker: str, error: str, at: float
    ) -> None:
        """A task ends done or dead: record it, then release or cancel its dependents."""
        self.status[task] = status
        self.started_at[task], self.finished_at[task] = started, finished
        self.error[task] = error or self.error[task]
        self.terminal += 1
        self.records.add(task, self.attempt[task], worker, started, finished, STATUS_NAMES[status], error)
        released = False
        for dependent in self.dependents[task]:
            if self.status[dependent] in TERMINAL:
                continue
            if status == DONE or self.config.allow_failure:
                self.missing[dependent] -= 1
                if self.missing[dependent] == 0:
                    self._enqueue(dependent, at)
                    released = True
            else:
                self._cancel(dependent, task, at)
        if released and not self.token:
            self._wake(at)

    def _cancel(self, task: int, cause: int, at: float) -> None:
        stack = [task]
        while stack:
            t = stack.pop()
            if self.status[t] in TERMINAL:
                continue
            self.status[t] = CANCELLED
            self.finished_at[t] = at
            self.terminal += 1
            self.records.add(t, self.attempt[t], "", math.nan, at, "cancelled", f"cancelled: {self.ids[cause]} failed")
            stack.extend(self.dependents[t])

    # -- leases that stop being renewed, and the reaper --------------------------------

    def _doom(self, lease: Lease, expires_at: float) -> None:
        lease.expires_at = expires_at
        self._serial += 1
        heapq.heappush(self.doomed, (expires_at, self._serial, lease))

    def _stop_renewing(self, worker: WorkerState, at: float) -> None:
        """``worker`` crashed or froze at ``at``: its leases expire lease_s after its last ping."""
        if not self.wcfg.heartbeat:
            return  # already doomed when claimed
        ping = self.wcfg.ping_every_s
        for lease in worker.held:
            if lease.reaped or lease.expires_at < 0:
                continue
            last_ping = lease.claimed_at + math.floor((at - lease.claimed_at) / ping) * ping
            self._doom(lease, last_ping + self.wcfg.lease_s)

    def _resume_renewing(self, worker: WorkerState, at: float) -> None:
        """A hang is over: a lease not yet expired is renewed again (heartbeat.lua renews only a live key)."""
        if not self.wcfg.heartbeat:
            return
        for lease in worker.held:
            if not lease.reaped and at < lease.expires_at < math.inf:
                lease.expires_at = math.inf

    def reaper(self) -> Process:
        interval = self.config.reaper_interval_s
        while not self.all_exited.triggered:
            yield self.env.timeout(interval)
            at, _ = self._call(self.env.now, self.profile.call_s())
            self.reap(at)

    def reap(self, at: float) -> None:
        """reap.lua at Redis time ``at``: expired leases' tasks go back to the front, or die at their last attempt."""
        returned = False
        while self.doomed and self.doomed[0][0] <= at:
            expires_at, _, lease = heapq.heappop(self.doomed)
            if lease.reaped or lease.expires_at != expires_at:
                continue  # settled, renewed again, or doomed anew
            lease.reaped = True
            lease.holder.held.discard(lease)
            self.expired += 1
            self.live_leases -= 1
            for task in sorted(lease.tasks, reverse=True):
                self.reaped += 1
                self.lease_of[task] = None
                attempt = self.attempt[task]
                self.records.add(task, attempt, lease.holder.id, math.nan, at, "expired", "lease expired")
                if attempt < self.config.max_attempts:
                    self.status[task] = QUEUED
                    self.ready.append(task)
                    returned = True
                else:
                    self._finish(task, DEAD, math.nan, at, lease.holder.id, "lease expired", at)
            lease.tasks = set()
        if returned and not self.token:
            self._wake(at)

    # -- a worker process ------------------------------------------------------------

    def _send_claim(self, worker: WorkerState, count: int, settlements: list[Settlement], backoff_s: float) -> Pending:
        """One call: settle ``settlements`` (if any), then claim ``count`` (lua/settle.lua or claim.lua)."""
        sent = worker.busy_until = self._cpu(self._after_sleep(worker), self.profile.client_call_s)
        settled = len(settlements)
        # Redis's cost depends on what the claim takes, known only once it runs: charge the claim's
        # tasks as they are taken, at the price per task, to a call of the settle's size first.
        at, _ = self._call(sent, self.profile.call_s(settled=settled))
        if settlements:
            self.settle(worker, at, settlements, backoff_s)
        claim = self.claim(worker, at, count, settled=bool(settlements))
        extra = len(claim.tasks) * self.profile.server_claim_task_s
        self.redis_free_at += extra
        self.redis_busy_s += extra
        return Pending(self.redis_free_at + self.half_rtt, claim)

    def _after_sleep(self, worker: WorkerState) -> float:
        """When a call can leave: a worker whose handler slept long warms up first (CostProfile.cold_cpu_s)."""
        now = max(self.env.now, worker.busy_until)
        if worker.slept_s:
            now += self.profile.cold_cpu_s * cold(worker.slept_s)
            worker.slept_s = 0.0
        return now

    def _send_settle(self, worker: WorkerState, settlements: list[Settlement], backoff_s: float) -> None:
        """A flush: outcomes sent without waiting for the reply."""
        sent = worker.busy_until = self._cpu(self._after_sleep(worker), self.profile.client_call_s)
        at, _ = self._call(sent, self.profile.call_s(settled=len(settlements)))
        self.settle(worker, at, settlements, backoff_s)
        if settlements and self._drained():  # settle.lua's claim of nothing: it may have ended the last task
            self._wake(at)

    def _collect(self, worker: WorkerState, pending: Pending) -> Steps:
        """Wait for a reply (and for the worker's own CPU, still encoding what it sent)."""
        ready = max(pending.reply_at, worker.busy_until)
        if ready > self.env.now:
            yield self.env.timeout(ready - self.env.now)

    def _catch_up(self, worker: WorkerState) -> Steps:
        """The worker's CPU is busy sending until busy_until: nothing else happens on it before."""
        if worker.busy_until > self.env.now:
            yield self.env.timeout(worker.busy_until - self.env.now)

    def _may_claim_ahead(self, claim: Claim, ahead: int, short_tasks: bool) -> bool:
        """Worker._may_claim_ahead: a claim goes out while the last one's tasks run, for any kind of work.

        Behind a sleeping handler a claim ahead hides the round trip; behind no-op
        work it still overlaps Redis's part of the call with the worker's own. One
        real no-op worker, batch 1, measured 4,057 and 5,282 tasks/s without prefetch
        and 10,020 and 8,273 with prefetch 2; the model once kept no-op workers from
        claiming ahead and predicted half their throughput.
        """
        left = claim.backlog - ahead * self.wcfg.batch_size
        if left <= 0:
            return False
        return short_tasks or left > claim.in_flight + ahead

    def _backoff_s(self, settlements: list[Settlement]) -> float:
        retries = [self.attempt[s.task] for s in settlements if s.outcome == "retry"]
        return self.wcfg.backoff_for(max(retries)) if retries else 0.0

    def worker(self, worker_id: str, first: bool) -> Process:
        """Worker.run, for one process of worker ``worker_id``."""
        env, cfg = self.env, self.wcfg
        me = WorkerState(worker_id)
        ready_at = self._cpu(env.now, self.profile.worker_start_s)
        yield env.timeout(ready_at - env.now)
        if first:
            self.ready_workers += 1
            if self.ready_workers == len(self.worker_ids) and not self.all_ready.triggered:
                self.all_ready.succeed()
        prefetch = 0 if (self.chaos.crash_p or self.chaos.hang_p) else cfg.prefetch
        batch = cfg.batch_size
        ahead: deque[Pending] = deque()
        pending = self._send_claim(me, batch, [], 0.0)
        yield from self._collect(me, pending)
        claim = pending.claim
        short_tasks = False
        while True:
            if claim.tasks:
                while len(ahead) < prefetch and self._may_claim_ahead(claim, len(ahead), short_tasks):
                    ahead.append(self._send_claim(me, batch, [], 0.0))
                yield from self._catch_up(me)
                began = env.now
                settlements = yield from self._work_on(me, claim)
                if me.dead:
                    return
                short_tasks = (env.now - began) / len(claim.tasks) < cfg.prefetch_below_s
                backoff_s = self._backoff_s(settlements)
                if not ahead:
                    pending = self._send_claim(me, batch, settlements, backoff_s)
                    yield from self._collect(me, pending)
                    claim = pending.claim
                    continue
                pending = ahead.popleft()
                yield from self._collect(me, pending)
                claim = pending.claim
                if self._may_claim_ahead(claim, len(ahead), short_tasks):
                    ahead.append(self._send_claim(me, batch, settlements, backoff_s))
                elif settlements:
                    self._send_settle(me, settlements, backoff_s)
                yield from self._catch_up(me)
                continue
            if ahead:
                pending = ahead.popleft()
                yield from self._collect(me, pending)
                claim = pending.claim
                continue
            if claim.drained:  # a serving worker (exit_when_drained False) is stopped here too: the run is over
                break
            yield from self._wait(me, claim.next_due)
            pending = self._send_claim(me, batch, [], 0.0)
            yield from self._collect(me, pending)
            claim = pending.claim
        at, _ = self._call(env.now, self.profile.call_s())  # finish.lua: a leaving worker wakes the next
        if self._drained():
            self._wake(at)
        self._exit(me)

    def _wait(self, me: WorkerState, next_due: float | None) -> Steps:
        """Block for the wake-up token, at most idle_wait_s or until the next retry is due."""
        env = self.env
        wait_s = self.wcfg.idle_wait_s
        if next_due is not None:
            wait_s = min(wait_s, max(next_due - env.now, 0.001))
        if self.token:
            self.token = False
            yield env.timeout(self.profile.round_trip_s)
            return
        woken = env.event()
        self.idle.append((me, woken))
        yield woken | env.timeout(wait_s)
        if not woken.triggered:
            woken.succeed()  # marks the entry stale: _wake skips it

    def _exit(self, me: WorkerState) -> None:
        me.dead = True
        self.workers_running -= 1
        self.last_exit = max(self.last_exit, self.env.now)
        if self.workers_running == 0 and not self.all_exited.triggered:
            self.all_exited.succeed()

    def _work_on(self, me: WorkerState, claim: Claim) -> Generator[Event, object, list[Settlement]]:
        """Run a claim's tasks; returns the outcomes not yet sent (None-like empty list if the worker died)."""
        env, cfg, chaos = self.env, self.wcfg, self.chaos
        lease = claim.lease
        assert lease is not None
        pending: list[Settlement] = []
        flushed_at = env.now
        last = len(claim.tasks) - 1
        for i, task in enumerate(claim.tasks):
            if lease.reaped:  # the heartbeat found the lease gone: drop the rest, the reaper returned them
                break
            started = env.now
            attempt = self.attempt[task]
            faults = draw(chaos, self.ids[task], attempt) if chaos.active else None
            service = self.duration_s[task]
            if faults is not None and faults.crash:
                yield env.timeout(service / 2)
                self._crash(me)
                return []
            if faults is not None and faults.hang:
                self._stop_renewing(me, env.now)  # the whole worker stalls, its heartbeat included
                yield env.timeout(chaos.hang_s)
                self._resume_renewing(me, env.now)
            if faults is not None and faults.straggle:
                service *= chaos.straggler_factor
            limit = cfg.task_timeout_s
            done_at = self._cpu(env.now + service, self.profile.client_task_s)
            if limit is not None and done_at - started > limit:
                # The watchdog records the overrun at the limit; the process is then replaced.
                yield env.timeout(limit)
                message = f"time limit of {limit:g} s exceeded"
                outcome = "retry" if attempt < self.config.max_attempts else "dead"
                self._send_settle(me, [Settlement(task, lease, outcome, started, env.now, message)], 0.0)
                self._crash(me)
                return []
            yield env.timeout(done_at - env.now)
            if self.sleeps and service > 0:
                me.slept_s = service
            if faults is not None and faults.fail:
                pending.append(
                    Settlement(task, lease, "retry", started, env.now, f"injected failure (chaos seed {chaos.seed})")
                )
            else:
                pending.append(Settlement(task, lease, "done", started, env.now))
            if env.now - flushed_at >= cfg.flush_interval_s and i != last:
                self._send_settle(me, pending, self._backoff_s(pending))
                yield from self._catch_up(me)
                pending = []
                flushed_at = env.now
        return pending

    def _spawn(self, worker_id: str, first: bool) -> None:
        self.workers_running += 1
        self.env.process(self.worker(worker_id, first))

    def _crash(self, me: WorkerState) -> None:
        """The process dies holding its leases; the supervisor starts a replacement while work is left."""
        self._stop_renewing(me, self.env.now)
        if not self._drained():
            self.restarts += 1
            self._spawn(me.id, first=False)
        self._exit(me)

    # -- the producer and the run --------------------------------------------------------

    def producer(self, offsets: list[float]) -> Process:
        """Open loop: tasks arrive at ``offsets`` after every worker is ready (as wqsim.run does)."""
        env = self.env
        yield self.all_ready
        t0 = env.now
        for task, offset in enumerate(offsets):
            if t0 + offset > env.now:
                yield env.timeout(t0 + offset - env.now)
            at, _ = self._call(env.now, self.profile.call_s(enqueued=1))
            self._enqueue(task, at)
            if not self.token:
                self._wake(at)
        self.producers = 0
        at, _ = self._call(env.now, self.profile.call_s())
        self._wake(at)

    def run(self, until_s: float | None = None) -> bool:
        """Run to the end (every worker exited); False if ``until_s`` of virtual time came first."""
        cfg = self.config
        if cfg.arrival_rate is not None:
            self.producers = 1
            self.env.process(self.producer(arrival_offsets(cfg.tasks, cfg.arrival_rate, cfg.arrival_seed)))
        else:
            for task in range(len(self.ids)):
                if self.missing[task] == 0:
                    self._enqueue(task, 0.0)
                else:
                    self.status[task] = WAITING
        for worker_id in self.worker_ids:
            self._spawn(worker_id, first=True)
        self.env.process(self.reaper())
        limit = self.env.timeout(until_s) if until_s is not None else None
        self.env.run(until=self.all_exited if limit is None else (self.all_exited | limit))
        return self.all_exited.triggered
