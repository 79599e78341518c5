"""The queue operations: enqueue, claim, settle, heartbeat, reap, inspect, purge.

Each state change is one Lua script call (see ``lua/``), so it is atomic and
costs one round trip. ``settle`` records outcomes and claims the next tasks in
the same call: a busy worker talks to Redis once per task, not twice.

``Queue`` is the typed domain API. How a call reaches Redis is
wqsim.transport's business (pipelined down a private connection, or through
the pool); what a script answers is decoded in wqsim.replies.

Time: the scripts stamp the moments a task becomes ready (``enqueued_at``)
and is recorded finished by a settle with Redis's own clock (``TIME``). Every
other time a Queue sends (lease deadlines, retry due times, a reap's "now", an
attempt's ``started_at``/``finished_at``) is read from its ``clock``. Give it a
wqsim.clocks.ServerClock (the Worker does) and those are Redis's time base
too, so times written from different hosts can be compared.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Literal, NamedTuple, TypeVar, cast

import redis

from . import replies
from .clocks import Clock
from .config import check_time_limit
from .graph import validate as validate_graph
from .keys import IdRange, Keys, check_id, parse_lease
from .replies import Claim, Claimed, ReapResult, Reply, Snapshot
from .retention import Retention
from .task import Status, Task, to_json
from .transport import Pipelined, Pooled, Request, Ticket, Transport, plain, script_commands, tolerant, transaction

__all__ = [
    "Claim",
    "Claimed",
    "Clock",
    "DuplicateTask",
    "EnqueueRefused",
    "Outcome",
    "Queue",
    "ReapResult",
    "Settlement",
    "Snapshot",
    "TaskNotFound",
    "TaskRetired",
]

T = TypeVar("T")
Outcome = Literal["done", "retry", "dead", "release"]


class Settlement(NamedTuple):
    """What a worker reports for one claimed task."""

    task_id: str
    lease: str  # the lease id the task was claimed under: the fencing token
    outcome: Outcome
    value: str  # result JSON for 'done', error text otherwise
    started_at: float = 0.0
    finished_at: float = 0.0


class DuplicateTask(ValueError):
    """An enqueue named a task id the queue already holds; nothing was written."""


class EnqueueRefused(RuntimeError):
    """Redis refused an enqueue (out of memory under ``maxmemory``); ``written`` tasks were
    written, which is none: an enqueue is all-or-nothing."""

    def __init__(self, message: str, written: int = 0) -> None:
        super().__init__(message)
        self.written = written


class TaskNotFound(LookupError):
    """No hash for this task id in the queue: it never existed, or it was lost."""


class TaskRetired(TaskNotFound):
    """The task's hash is gone because the retention policy retired it after it was done."""


class Queue:
    """One named queue on one Redis client.

    ``own_connection=True`` sends claim and settle down a private connection
    (a wqsim.transport.Pipelined): for a worker's loop, used from one thread
    only. Without it every call goes through the client's pool and the
    ``*_nowait`` calls simply run at once.
    """

    def __init__(self, client: redis.Redis, name: str, clock: Clock = time.time, own_connection: bool = False) -> None:
        self.client = client
        self.keys = Keys(name)
        self.clock = clock
        self._pooled = Pooled(client)
        self._hot: Transport = Pipelined(client) if own_connection else self._pooled
        self._producer = threading.local()  # each thread's own Pipelined, for enqueue: see _enqueue_call
        # The KEYS and two ARGV every script starts with (see lua/_lib.lua).
        self._scripts = script_commands(client, self.keys.script_keys(), [self.keys.prefix, self.keys.progress_channel])

    @property
    def name(self) -> str:
        return self.keys.queue

    @property
    def reader(self) -> redis.Redis:
        """A client for reading fields anyone may have written: bytes that are not UTF-8 come
        back as surrogate escapes instead of failing the whole reply (the audit uses it)."""
        return tolerant(self.client)

    def _script(self, name: str, decode: Callable[[Reply], T], *args: object) -> Request[T]:
        """A call of script ``name`` with ``args`` after the ARGV every script starts with."""
        return Request((*self._scripts[name], *args), decode, name)

    def _enqueue_call(self, request: Request[replies.Enqueued]) -> replies.Enqueued:
        """Run an enqueue down a connection of the calling thread's own.

        A producer's enqueue is on every task's pickup-latency path, and
        redis-py's generic command path costs about as much client time as a
        loopback round trip. One connection per thread keeps a Queue safe to
        share between threads. A failed call is raised, not retried: the
        script may have run, and a retried enqueue would be refused.
        """
        own: Pipelined | None = getattr(self._producer, "conn", None)
        if own is None:
            own = self._producer.conn = Pipelined(self.client, check_stale=True)
        return own.call(request)

    def close(self) -> None:
        """Hand back the private connections of this thread, if any (the client's pool is the caller's)."""
        self._hot.close()
        own: Pipelined | None = getattr(self._producer, "conn", None)
        if own is not None:
            own.close()

    # -- producing ---------------------------------------------------------------
    def allocate_ids(self, count: int) -> list[str]:
        """Reserve ``count`` fresh task ids ("1", "2", ...) with one INCRBY."""
        return list(self.reserve_ids(count))

    def reserve_ids(self, count: int) -> IdRange:
        """Like allocate_ids, as a lazy sequence: reserving 10,000,000 ids holds none of them."""
        try:
            last = self.client.incrby(self.keys.next_id, count)
        except redis.exceptions.OutOfMemoryError:  # the first write of generate(): the same refusal
            raise self._out_of_memory(count) from None
        return IdRange(last - count + 1, last)

    def enqueue(
        self,
        tasks: Sequence[Task],
        package_size: int | None = None,
        allow_failure: bool | None = None,
        chunk: int = 5000,
    ) -> list[str]:
        """Write task hashes and queue them: all-or-nothing, in one round trip.

        The tasks go through enqueue.lua: one call when they fit in one chunk of
        ``chunk`` tasks, else every chunk in one MULTI/EXEC. Either way a crash
        mid-way leaves no half-enqueued batch, the ``total`` counter always
        matches the tasks written, and the server is never blocked long by one
        script. An id that already exists in the queue is refused
        (DuplicateTask) and nothing is written.

        With ``package_size``, consecutive tasks are bundled into work packages
        that a worker claims as one unit under one lease (a package never spans
        two chunks). Returns the package ids.

        If any task names prerequisites (``depends_on``), the tasks are a graph:
        it is validated first (GraphError names an unknown id, a self-dependency
        or a cycle's path), and each task waits until its prerequisites are done.
        ``allow_failure`` sets every task's policy at once (the graph-wide
        default); left as None, each task's own ``allow_failure`` counts.
        """
        if not tasks:
            return []
        if package_size is not None and (
            isinstance(package_size, bool) or not isinstance(package_size, int) or package_size < 1
        ):
            raise ValueError(f"package_size must be an integer >= 1 (got {package_size!r})")
        is_graph = any(t.depends_on for t in tasks)
        if is_graph and package_size:
            raise ValueError("a graph cannot be bundled into work packages: its tasks are released one by one")
        size = package_size or 0
        if size:
            chunk = max(chunk - chunk % size, size)
        dependents = validate_graph(tasks) if is_graph else {}
        width = 8 if is_graph else 5
        payloads: dict[int, str] = {}  # generated tasks share one payload dict: encode it once
        flat: list[object] = []
        for task in tasks:
            check_id("task id", task.id)
            if task.timeout_s is not None:
                check_time_limit(f"timeout_s of task {task.id}", task.timeout_s)
            payload = payloads.get(id(task.payload))
            if payload is None:
                payload = payloads[id(task.payload)] = to_json(task.payload)
            flat += (
                task.id,
                task.kind,
                payload,
                task.max_attempts,
                "" if task.timeout_s is None else repr(task.timeout_s),
            )
            if is_graph:
                fails_ok = task.allow_failure if allow_failure is None else allow_failure
                flat += (" ".join(task.depends_on), " ".join(dependents[task.id]), int(fails_ok))
        ids = [t.id for t in tasks]
        try:
            return self._enqueue_flat(ids, flat, size, width, chunk)
        except redis.exceptions.OutOfMemoryError:  # checked before a script or a transaction runs
            raise self._out_of_memory(len(ids)) from None

    def _out_of_memory(self, count: int) -> EnqueueRefused:
        return EnqueueRefused(
            f"Redis refused to enqueue {count} task(s) into queue {self.name!r}: it is out of memory "
            f"(used memory > maxmemory); none was written. Raise maxmemory, or let workers finish "
            f"(the retention policy retires done tasks) and enqueue again"
        )

    def _enqueue_flat(self, ids: list[str], flat: list[object], size: int, width: int, chunk: int) -> list[str]:
        if len(flat) <= width * chunk:  # one script call is atomic by itself: one EVALSHA
            one = self._enqueue_call(
                self._script("enqueue", replies.enqueued, size, 0, len(ids), *ids, width, len(ids), *flat)
            )
            self._refuse(one.refused)
            return one.packages
        # Several chunks: EVALSHA inside MULTI/EXEC. The first chunk checks every id (see enqueue.lua).
        requests: list[Request[object]] = []
        for start in range(0, len(flat), width * chunk):
            part = flat[start : start + width * chunk]
            check = ids if start == 0 else []
            requests.append(
                self._script("enqueue", replies.enqueued, size, 1, len(check), *check, width, len(part) // width, *part)
            )
        requests += [plain("HGET", self.keys.stats, "refused"), plain("HDEL", self.keys.stats, "refused")]
        *chunks, refused, _ = transaction(self.client, requests)
        for reply in (*chunks, refused):
            if isinstance(reply, Exception):
                raise reply
        self._refuse(str(refused or ""))
        return [pid for reply in chunks for pid in replies.enqueued(reply).packages]

    def _refuse(self, refused: str) -> None:
        if refused:
            shown = refused.split()
            more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
            raise DuplicateTask(
                f"task id(s) already exist in queue {self.name!r}: {', '.join(shown[:10])}{more}; nothing was enqueued"
            )

    # -- consuming ---------------------------------------------------------------
    def claim(self, worker: str, lease_ms: int, count: int = 1) -> Claim:
        """Claim up to ``count`` ready tasks, or one whole work package, under one lease."""
        return self._hot.call(self._claim(worker, lease_ms, count))

    def settle(
        self,
        worker: str,
        settlements: Iterable[Settlement],
        lease_ms: int,
        claim_next: int = 0,
        backoff_s: float = 0.0,
    ) -> Claim:
        """Record outcomes (each fenced by its lease) and claim up to ``claim_next`` more, in one call."""
        return self._hot.call(self._settle(worker, settlements, lease_ms, claim_next, backoff_s))

    def set_retention(self, retention: Retention) -> None:
        """Make ``retention`` this queue's policy: every worker's scripts apply it from now on."""
        self.client.hset(self.keys.retention, items=[x for pair in retention.to_fields().items() for x in pair])

    def recorded_shards(self) -> int | None:
        """If this queue is a shard: how many shards its logical queue has, as recorded (else None)."""
        return self._layout("shards")

    def split_into(self) -> int | None:
        """If this queue's tasks went to shards: how many, as recorded (else None: it is not split)."""
        return self._layout("split_into")

    def _layout(self, field: str) -> int | None:
        recorded = cast("str | None", self.client.hget(self.keys.layout, field))
        return int(recorded) if recorded else None

    def retention(self) -> Retention:
        """The policy the scripts apply to this queue (the defaults unless one was set)."""
        return Retention.from_fields(cast("dict[str, str]", self.client.hgetall(self.keys.retention)))

    def finish(self, worker: str) -> str:
        """Record that ``worker`` has finished and announce it on the finished channel, in one
        atomic call (see lua/finish.lua); returns the entry id in the finishes stream."""
        return self._pooled.call(self._script("finish", replies.text, worker, self.keys.finished_channel))

    # -- pipelined: send now, read the reply later ---------------------------------
    # A worker hands Redis its finished work and its request for more, then goes
    # on with tasks it already holds while Redis answers: round trips overlap with
    # work. Without a private connection these calls simply run at once.
    def wait_then_claim(self, worker: str, timeout_s: float, lease_ms: int, count: int = 1) -> Claim:
        """Sleep until woken (or ``timeout_s`` passes), then claim: one round trip on a private connection.

        The claim is sent in the same write as the BLPOP. Redis keeps a blocked
        client's next command in its input buffer and runs it the moment the
        BLPOP returns, so a woken worker has its tasks without asking again.
        The claim reads Redis's clock: the caller's, read before the wait,
        would be stale by the length of the wait.
        """
        blpop = plain("BLPOP", self.keys.signal, max(timeout_s, 0.001))
        woken, claimed = self._hot.send(blpop, self._claim(worker, lease_ms, count, now=""))
        self._hot.reply(woken)
        return self.result(claimed)

    def claim_nowait(self, worker: str, lease_ms: int, count: int = 1) -> Ticket[Claim]:
        return self._hot.send(self._claim(worker, lease_ms, count))[0]

    def settle_nowait(
        self, worker: str, settlements: Iterable[Settlement], lease_ms: int, claim_next: int = 0, backoff_s: float = 0.0
    ) -> Ticket[Claim]:
        return self._hot.send(self._settle(worker, settlements, lease_ms, claim_next, backoff_s))[0]

    def result(self, ticket: Ticket[Claim]) -> Claim:
        """The Claim answering a claim_nowait or settle_nowait ticket."""
        return self._hot.reply(ticket)

    def _claim(self, worker: str, lease_ms: int, count: int, now: str | None = None) -> Request[Claim]:
        """A claim.lua call; ``now`` '' has the script read Redis's clock."""
        return self._script("claim", replies.claim, worker, repr(self.clock()) if now is None else now, lease_ms, count)

    def _settle(
        self, worker: str, settlements: Iterable[Settlement], lease_ms: int, claim_next: int, backoff_s: float
    ) -> Request[Claim]:
        args = self._settle_args(worker, settlements, lease_ms, claim_next, backoff_s)
        return self._script("settle", replies.settle, *args)

    def _settle_args(
        self, worker: str, settlements: Iterable[Settlement], lease_ms: int, claim_next: int, backoff_s: float
    ) -> list[object]:
        flat: list[object] = []
        for s in settlements:
            flat += (s.task_id, s.lease, s.outcome, s.value, repr(s.started_at), repr(s.finished_at))
        return [worker, repr(self.clock()), lease_ms, claim_next, repr(backoff_s), len(flat) // 6, *flat]

    def heartbeat(self, leases: Iterable[str], lease_ms: int, worker: str | None = None, since: int = 0) -> list[str]:
        """Renew leases that are still alive; return the ids of those that were lost.

        With ``worker``, also renew that worker's other leases numbered above
        ``since`` (see leases_issued): claims it made ahead and has not read.
        """
        leases = list(leases)
        if not leases and worker is None:
            return []
        return self._pooled.call(
            self._script("heartbeat", replies.ids, repr(self.clock()), lease_ms, worker or "", since, *leases)
        )

    def leases_of(self, worker: str, since: int = 0) -> set[str]:
        """The live leases of ``worker`` numbered above ``since`` (see leases_issued)."""
        out = set()
        for lease in cast("list[str]", self.client.zrange(self.keys.inflight, 0, -1)):
            owner, number, _ = parse_lease(lease)
            if owner == worker and number > since:
                out.add(lease)
        return out

    def expire_leases(self, leases: Iterable[str]) -> None:
        """End leases now, as if their TTL had run out: the next reap returns their tasks.

        Deleting the key is what expiry is (settle.lua then rejects their
        results); the deadline in the inflight index moves to now so that the
        reaper need not wait for the one the lease was given.
        """
        leases = list(leases)
        if not leases:
            return
        now = self.clock()
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(*(self.keys.lease(lease) for lease in leases))
        pipe.zadd(self.keys.inflight, {lease: now for lease in leases}, xx=True)
        pipe.execute()

    def record_fault(self, task_id: str, attempt: int, worker: str, faults: str) -> None:
        """Note in the events stream that chaos injected ``faults`` into this attempt."""
        self.client.xadd(
            self.keys.events,
            {
                "event": "fault",
                "id": task_id,
                "attempt": attempt,
                "worker": worker,
                "at": repr(self.clock()),
                "detail": faults,
            },
            maxlen=self.retention().events_maxlen,
            approximate=True,
        )

    def leases_issued(self) -> int:
        """How many leases the queue has issued: every lease made later is numbered above this."""
        return int(self.client.hget(self.keys.stats, "leases") or 0)

    def reap(self, limit: int = 1000, now: float | None = None) -> ReapResult:
        """Return the tasks of leases whose key Redis has expired; see lua/reap.lua."""
        now_s = repr(self.clock() if now is None else now)
        return self._pooled.call(self._script("reap", replies.reaped, now_s, limit))

    def snapshot(self) -> Snapshot:
        """Task ids in each structure, the counters and the newest event id, read atomically.

        One instant for all of them, so their counts can be compared (see lua/snapshot.lua).
        """
        return Pooled(self.reader).call(self._script("snapshot", replies.snapshot))

    def verify_lost(self, task_ids: Sequence[str]) -> list[str]:
        """Of ``task_ids``, those lost at one instant: out of the structure their status
        requires, hash missing, stuck waiting, or of unknown status (see lua/verify.lua)."""
        if not task_ids:
            return []
        return Pooled(self.reader).call(self._script("verify", replies.ids, *task_ids))

    def hold_open(self, producer: str) -> None:
        """Keep the queue from counting as drained while ``producer`` still adds tasks.

        Workers exit once every task is terminal; in an open-loop run tasks
        arrive one by one, and the queue would be drained between two arrivals.
        Call before the first task arrives and ``release_hold`` after the last.
        """
        self.client.sadd(self.keys.producers, check_id("producer", producer))

    def release_hold(self, producer: str) -> None:
        """``producer`` adds no more tasks; wake an idle worker, which sees the queue drained if it is
        (and, finding it so, wakes the next: see claim in lua/_lib.lua)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.srem(self.keys.producers, producer)
        pipe.delete(self.keys.signal)  # the list holds at most one token
        pipe.lpush(self.keys.signal, "1")
        pipe.execute()

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a wake-up signal arrives or ``timeout_s`` passes. No polling loop."""
        timeout = max(timeout_s, 0.001)
        return self._hot.call(plain("BLPOP", self.keys.signal, timeout)) is not None

    # -- inspecting --------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        raw = cast("dict[str, str]", self.client.hgetall(self.keys.stats))
        return {name: int(value) for name, value in raw.items()}

    def scan_task_keys(self, cursor: int = 0, count: int = 1000) -> tuple[int, bool]:
        """One SCAN step through this queue's task hashes: the next cursor (0: the pass is over)
        and whether this step found any."""
        cursor, keys = self.client.scan(cursor, match=self.keys.task_pattern, count=count)
        return int(cursor), bool(keys)

    def has_stats(self) -> bool:
        return bool(self.client.exists(self.keys.stats))

    def ledger_enqueued(self) -> int:
        """Tasks ever enqueued, as the ledger (Keys.ledger) counts them apart from the stats hash."""
        return int(self.client.hget(self.keys.ledger, "enqueued") or 0)

    def drained(self) -> bool:
        """True once every task the queue knows of is terminal (done, dead or cancelled) and no
        producer holds the queue open (see hold_open); never for a stats hash without its
        'created' sentinel (recreated after a loss)."""
        c = self.counters()
        total = c.get("total", 0)
        return (
            not self.client.exists(self.keys.producers)
            and bool(c.get("created"))
            and total > 0
            and c.get("done", 0) + c.get("dead", 0) + c.get("cancelled", 0) >= total
        )

    def lengths(self) -> dict[str, int]:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.llen(k.ready)
        pipe.zcard(k.inflight)
        pipe.zcard(k.delayed)
        pipe.llen(k.dead)
        ready, inflight, delayed, dead = pipe.execute()
        return {"ready": ready, "inflight": inflight, "delayed": delayed, "dead": dead}

    def task(self, task_id: str) -> Task:
        """The task as its hash holds it. TaskRetired if the hash is gone and done tasks
        have been retired (it most likely was one of them: the retention policy keeps no
        record per retired id), TaskNotFound if there is no such task."""
        fields = cast("dict[str, str]", self.client.hgetall(self.keys.task(task_id)))
        if fields:
            return Task.from_hash(fields)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.stats, "retired")
        pipe.hget(self.keys.ledger, "retired")
        pipe.zscore(self.keys.done_index, task_id)
        retired, ledger_retired, indexed = pipe.execute()
        retired = max(int(retired or 0), int(ledger_retired or 0))
        if retired and indexed is None:
            raise TaskRetired(
                f"task {task_id!r} of queue {self.name!r} is gone: {retired:,} done task(s) were retired by the "
                f"retention policy ({self.retention().describe()}), and only the counters remember them"
            )
        raise TaskNotFound(f"queue {self.name!r} has no task {task_id!r}")

    def statuses(self) -> dict[str, Status]:
        """Status of every task of the queue (SCAN; for audits and tests, not hot paths)."""
        out: dict[str, Status] = {}
        for key, fields in self.iter_task_hashes(("status",)):
            out[self.keys.task_id_of(key)] = Status(fields[0]) if fields[0] else Status.QUEUED
        return out

    def iter_task_hashes(self, fields: Sequence[str], chunk: int = 1000) -> Iterator[tuple[str, list[str | None]]]:
        """Yield (key, [values of ``fields``]) for every task hash of this queue."""
        batch: list[str] = []
        for key in self.reader.scan_iter(match=self.keys.task_pattern, count=chunk):
            batch.append(key)
            if len(batch) >= chunk:
                yield from self._hmget_all(batch, fields)
                batch = []
        if batch:
            yield from self._hmget_all(batch, fields)

    def _hmget_all(self, keys: list[str], fields: Sequence[str]) -> Iterator[tuple[str, list[str | None]]]:
        pipe = self.reader.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, list(fields))
        return zip(keys, pipe.execute(), strict=False)

    def events(self) -> list[dict[str, str]]:
        """The durable record: one entry per attempt outcome, oldest first."""
        entries = cast("list[tuple[str, dict[str, str]]]", self.client.xrange(self.keys.events))
        return [dict(fields, entry=entry_id) for entry_id, fields in entries]

    # -- housekeeping ------------------------------------------------------------
    def purge(self) -> int:
        """Delete this queue's keys, and only these. Never FLUSHDB."""
        deleted = 0
        batch: list[str] = []
        for key in self.client.scan_iter(match=self.keys.pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += self.client.delete(*batch)
                batch = []
        if batch:
            deleted += self.client.delete(*batch)
        return deleted
