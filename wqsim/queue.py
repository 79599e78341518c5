"""The queue operations: enqueue, claim, settle, heartbeat, reap, inspect, purge.

Each state change is one Lua script call (see ``lua/``), so it is atomic and
costs one round trip. ``settle`` records outcomes and claims the next tasks in
the same call: a busy worker talks to Redis once per task, not twice.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, TypedDict

import redis

from .config import check_time_limit
from .graph import validate as validate_graph
from .keys import IdRange, Keys, check_id, parse_lease
from .retention import Retention
from .scripts import scripts_for
from .task import Status, Task, to_json

Clock = Callable[[], float]
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


class Claimed(NamedTuple):
    """One task as claim.lua hands it over; kind or payload is None in a malformed hash."""

    id: str
    kind: str | None
    payload: str | None
    attempt: int
    inputs: Sequence[str] = ()  # a graph task's prerequisites, flat: [id, status, result JSON or error, ...]
    timeout_s: float | None = None  # the task's own time limit, if it has one


@dataclass(frozen=True)
class Claim:
    """The reply to a claim: tasks now leased to the caller, and what to do if none.

    ``state`` says whether Redis still holds the queue's record (checked only when
    nothing was claimed, see drain_state() in lua/_lib.lua): 'ok'; 'missing', no
    stats hash and nothing saying there ever was one (a queue not created yet);
    'lost', the stats hash is gone while the ledger remains, or was recreated
    without its sentinel (Redis lost it: a restart without persistence, or eviction);
    'stranded', tasks are unfinished yet in no list, claim or retry schedule (their
    entries were lost, e.g. the ready list was evicted): nothing will finish them.
    """

    lease: str | None = None
    tasks: list[Claimed] = field(default_factory=list)
    drained: bool = False
    next_due: float | None = None  # when the earliest scheduled retry becomes due
    rejected: list[str] = field(default_factory=list)
    backlog: int = 0  # ready-list entries left after this claim
    claims_in_flight: int = 0  # leases alive on the queue, this one included (all workers)
    state: Literal["ok", "missing", "lost", "stranded"] = "ok"


class Snapshot(TypedDict):
    """Queue.snapshot(): what lua/snapshot.lua read at one instant."""

    queued: list[str]  # ready list entries, work packages expanded
    running: list[str]  # held by a lease in the inflight index
    scheduled: list[str]  # delayed set
    dead: list[str]  # dead-letter list
    counters: dict[str, int]  # the stats hash
    last_event: str  # newest entry id of the events stream, '' if none
    ledger: dict[str, int]  # Keys.ledger: enqueued and retired, apart from the stats hash


@dataclass(frozen=True)
class ReapResult:
    returned: int
    buried: int


try:  # hiredis packs a whole command in C; redis-py's packer encodes argument by argument
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay correct without it
    _pack = None


class _OwnConnection:
    """A connection that one thread keeps for itself, for a worker's hot path.

    Going through ``redis.Redis.execute_command`` costs about as much client
    time as a loopback round trip (pool checkout, retries, instrumentation);
    a worker that talks to Redis once per task sends its claims and settles
    straight down a connection of its own instead. Errors still surface as
    redis-py exceptions, so the worker's reconnect logic is unchanged.
    """

    def __init__(self, client: redis.Redis, check_stale: bool = False) -> None:
        self.client = client
        self.check_stale = check_stale  # for a connection that may sit idle: see command()
        self.pid = os.getpid()
        self.conn: redis.connection.AbstractConnection | None = None
        self.pending: list[tuple[int, str | None, list[str], list[object]]] = []  # sent, reply not read yet
        self.replies: dict[int, object] = {}  # replies read, by ticket
        self._tickets = 0

    def _connection(self) -> redis.connection.AbstractConnection:
        """The connection, opened on first use with every script loaded.

        Loading up front matters for pipelining: a request sent ahead for a
        script the server lacks fails, and sending it again would put it
        behind requests sent after it.
        """
        if self.conn is None:
            conn = self.client.connection_pool.make_connection()
            if conn.encoder.decode_responses:
                # Task fields are anyone's bytes: a reply holding bytes that are not UTF-8 must
                # still be read whole (the worker then refuses that task; see wqsim.decoding),
                # never fail half-read with the claim already made. Set before it connects,
                # so the parser (hiredis or not) picks it up.
                enc = conn.encoder
                conn.encoder = type(enc)(enc.encoding, "surrogateescape", enc.decode_responses)
            scripts = scripts_for(self.client).values()
            conn.send_packed_command(conn.pack_commands([("SCRIPT", "LOAD", s.script) for s in scripts]))
            for _ in scripts:
                conn.read_response()
            self.conn = conn
        return self.conn

    def _send(self, *commands: tuple[object, ...]) -> None:
        """Write ``commands`` in one system call, so Redis reads them together."""
        conn = self._connection()
        packed = b"".join(_pack(c) if _pack else b"".join(conn.pack_command(*c)) for c in commands)
        conn.send_packed_command([packed], check_health=False)

    def command(self, *args: object) -> object:
        self.drain()
        if self.check_stale and self.conn is not None and _readable(self.conn):
            # An idle connection has nothing to read unless the server closed it (a restart,
            # an idle timeout): then open a fresh one rather than fail after sending.
            self.close()
        try:
            self._send(args)
            return self._connection().read_response()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.close()
            raise

    def evalsha(self, name: str, keys: list[str], args: list[object]) -> object:
        script = scripts_for(self.client)[name]
        try:
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # first use, or the server restarted
            self.command("SCRIPT", "LOAD", script.script)
            return self.command("EVALSHA", script.sha, len(keys), *keys, *args)

    def evalsha_nowait(self, name: str, keys: list[str], args: list[object]) -> int:
        """Send without waiting for the reply; returns a ticket for ``reply``."""
        script = scripts_for(self.client)[name]
        return self._send_nowait(("EVALSHA", script.sha, len(keys), *keys, *args), (name, keys, args))

    def command_nowait(self, *args: object) -> int:
        """Send a plain command without waiting for the reply; returns a ticket for ``reply``."""
        return self._send_nowait(args, (None, [], []))

    def _send_nowait(self, command: tuple[object, ...], script: tuple[str | None, list[str], list[object]]) -> int:
        return self.send_together([(command, script)])[0]

    def send_together(
        self, requests: list[tuple[tuple[object, ...], tuple[str | None, list[str], list[object]]]]
    ) -> list[int]:
        """Send several commands in one write without waiting; returns their tickets."""
        try:
            self._send(*(command for command, _ in requests))
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            self.close()
            raise
        tickets = []
        for _, script in requests:
            self._tickets += 1
            self.pending.append((self._tickets, *script))
            tickets.append(self._tickets)
        return tickets

    def reply(self, ticket: int) -> object:
        """The reply for ``ticket``, reading (in order) every reply sent before it."""
        self.drain(until=ticket)
        if ticket not in self.replies:
            raise redis.ConnectionError("the connection was reset before this reply was read")
        return self.replies.pop(ticket)

    def drain(self, until: int | None = None) -> None:
        """Read the replies of commands sent without waiting (all, or up to ``until``)."""
        unrun: list[tuple[int, str, list[str], list[object]]] = []
        while self.pending and (until is None or self.pending[0][0] <= until):
            ticket, name, keys, args = self.pending.pop(0)
            try:
                self.replies[ticket] = self._connection().read_response()
            except redis.exceptions.NoScriptError:  # SCRIPT FLUSH since connecting: it did not run
                assert name is not None  # only EVALSHA raises it
                unrun.append((ticket, name, keys, args))
                until = None  # nor, most likely, did those sent after it: read them all first
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.close()  # what was in flight is lost; leases expire and the reaper returns the tasks
                raise
        for ticket, name, keys, args in unrun:  # then send them again, in their order
            self.replies[ticket] = self.evalsha(name, keys, args)

    def close(self) -> None:
        self.pending.clear()
        self.replies.clear()
        if self.conn is not None:
            self.conn.disconnect()
            self.conn = None


def _tolerant(client: redis.Redis) -> redis.Redis:
    """``client``, or one like it on a pool of its own that decodes with surrogateescape."""
    pool = client.connection_pool
    if (
        not pool.connection_kwargs.get("decode_responses")
        or pool.connection_kwargs.get("encoding_errors") == "surrogateescape"
    ):
        return client
    per_pool = ("maint_notifications_pool_handler", "himport_registry")  # tied to the pool they were made for
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in per_pool}
    return redis.Redis(
        connection_pool=type(pool)(
            connection_class=pool.connection_class, **{**kwargs, "encoding_errors": "surrogateescape"}
        )
    )


def _readable(conn: redis.connection.AbstractConnection) -> bool:
    """One poll of the socket (redis-py's can_read costs several system calls)."""
    sock = getattr(conn, "_sock", None)
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


def _real_sockets(client: redis.Redis) -> bool:
    """False for an in-process FakeRedis: its connection runs pipelined commands out of
    order (seen with fakeredis 2.41), so it takes the ordinary path. fakeredis served
    over TCP (the embedded fallback) is a real socket and keeps the order."""
    return not client.connection_pool.connection_class.__module__.startswith("fakeredis")


class Queue:
    """One named queue on one Redis client.

    ``own_connection=True`` sends claim and settle down a private connection
    (see _OwnConnection): for a worker's loop, used from one thread only.
    """

    def __init__(self, client: redis.Redis, name: str, clock: Clock = time.time, own_connection: bool = False) -> None:
        self.client = client
        self.keys = Keys(name)
        self.clock = clock
        self._scripts = scripts_for(client)
        self._packs = _pack is not None and _real_sockets(client)  # see _run_packed
        self._producer = threading.local()
        self._own = _OwnConnection(client) if own_connection and _real_sockets(client) else None
        self._results: dict[int, tuple[str, list]] = {}  # without a private connection: replies by ticket
        self._names: dict[int, str] = {}
        self._ticket = 0
        self._reader: redis.Redis | None = None

    @property
    def name(self) -> str:
        return self.keys.queue

    @property
    def reader(self) -> redis.Redis:
        """A client for reading fields anyone may have written: bytes that are not UTF-8 come
        back as surrogate escapes instead of failing the whole reply (the audit uses it)."""
        if self._reader is None:
            self._reader = _tolerant(self.client)
        return self._reader

    def _argv(self, *args: object) -> list[object]:
        """ARGV of a script call: the two every script starts with (see lua/_lib.lua), then ``args``."""
        return [self.keys.prefix, self.keys.progress_channel, *args]

    def _run(self, script: str, *args: object) -> list:
        return self._scripts[script](
            keys=self.keys.script_keys(),
            args=self._argv(*args),
        )

    def _run_packed(self, script: str, *args: object) -> list:
        """Like _run, down a connection of the calling thread's own (see _OwnConnection).

        For a producer's enqueue, which is on every task's pickup-latency path:
        redis-py's generic command path (pool checkout with instrumentation,
        retry wrapper, per-argument encoding in Python) costs about as much
        client time as a loopback round trip. One connection per thread keeps a
        Queue safe to share between threads. A failed call is raised, not
        retried: the script may have run, and a retried enqueue would be refused.
        """
        if not self._packs:
            return self._run(script, *args)
        own = getattr(self._producer, "conn", None)
        if own is None or own.pid != os.getpid():  # a forked child opens its own, never its parent's
            own = self._producer.conn = _OwnConnection(self.client, check_stale=True)
        return own.evalsha(script, self.keys.script_keys(), self._argv(*args))  # type: ignore[return-value]

    def _hot(self, script: str, *args: object) -> list:
        """Like _run, down the private connection when this queue has one."""
        if self._own is None:
            return self._run(script, *args)
        return self._own.evalsha(script, self.keys.script_keys(), self._argv(*args))  # type: ignore[return-value]

    def close(self) -> None:
        """Close the private connections of this thread, if any (the client's pool is the caller's)."""
        if self._own is not None:
            self._own.close()
        if getattr(self._producer, "conn", None) is not None:
            self._producer.conn.close()

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
        head = self._argv(size)
        if len(flat) <= width * chunk:  # one script call is atomic by itself: one EVALSHA
            refused, *packages = self._run_packed("enqueue", size, 0, len(ids), *ids, width, len(ids), *flat)
            self._refuse(refused)
            return packages
        # Several chunks: EVALSHA inside MULTI/EXEC. If the server lacks the script, that call
        # fails without writing anything, so the transaction is loaded and sent again. The first
        # chunk checks every id (see enqueue.lua).
        script = self._scripts["enqueue"]
        keys = self.keys.script_keys()
        for _ in range(2):
            pipe = self.client.pipeline(transaction=True)
            for start in range(0, len(flat), width * chunk):
                part = flat[start : start + width * chunk]
                check = ids if start == 0 else []
                pipe.evalsha(
                    script.sha, len(keys), *keys, *head, 1, len(check), *check, width, len(part) // width, *part
                )
            pipe.hget(self.keys.stats, "refused")
            pipe.hdel(self.keys.stats, "refused")
            *replies, refused, _ = pipe.execute(raise_on_error=False)
            if not any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                break
            self.client.script_load(script.script)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        self._refuse(refused or "")
        return [pid for reply in replies for pid in reply[1:]]

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
        reply = self._hot("claim", worker, repr(self.clock()), lease_ms, count)
        return _claim_from(reply, rejected=[])

    def settle(
        self,
        worker: str,
        settlements: Iterable[Settlement],
        lease_ms: int,
        claim_next: int = 0,
        backoff_s: float = 0.0,
    ) -> Claim:
        """Record outcomes (each fenced by its lease) and claim up to ``claim_next`` more, in one call."""
        reply = self._hot("settle", *self._settle_args(worker, settlements, lease_ms, claim_next, backoff_s))
        return _claim_from(reply[1:], rejected=list(reply[0]))

    def set_retention(self, retention: Retention) -> None:
        """Make ``retention`` this queue's policy: every worker's scripts apply it from now on."""
        self.client.hset(self.keys.retention, mapping=retention.to_fields())

    def retention(self) -> Retention:
        """The policy the scripts apply to this queue (the defaults unless one was set)."""
        return Retention.from_fields(self.client.hgetall(self.keys.retention))

    def finish(self, worker: str) -> str:
        """Record that ``worker`` has finished and announce it on the finished channel, in one
        atomic call (see lua/finish.lua); returns the entry id in the finishes stream."""
        return self._run("finish", worker, self.keys.finished_channel)

    # -- pipelined: send now, read the reply later ---------------------------------
    # A worker hands Redis its finished work and its request for more, then goes
    # on with tasks it already holds while Redis answers: round trips overlap with
    # work. Without a private connection these calls simply run at once.
    def wait_then_claim(self, worker: str, timeout_s: float, lease_ms: int, count: int = 1) -> Claim:
        """Sleep until woken (or ``timeout_s`` passes), then claim: one round trip on a private connection.

        The claim is sent together with the BLPOP. Redis keeps a blocked
        client's next command in its input buffer and runs it the moment the
        BLPOP returns, so a woken worker has its tasks without asking again.
        The claim reads Redis's clock: the caller's, read before the wait,
        would be stale by the length of the wait.
        """
        if self._own is None:
            self.wait_for_work(timeout_s)
            return self.claim(worker, lease_ms, count)
        blpop = ("BLPOP", self.keys.signal, max(timeout_s, 0.001))
        keys, argv = self.keys.script_keys(), self._argv(worker, "", lease_ms, count)
        evalsha = ("EVALSHA", scripts_for(self.client)["claim"].sha, len(keys), *keys, *argv)
        woken, ticket = self._own.send_together([(blpop, (None, [], [])), (evalsha, ("claim", keys, argv))])
        self._names[ticket] = "claim"
        self._own.reply(woken)
        return self.result(ticket)

    def claim_nowait(self, worker: str, lease_ms: int, count: int = 1) -> int:
        return self._nowait("claim", [worker, repr(self.clock()), lease_ms, count])

    def settle_nowait(
        self, worker: str, settlements: Iterable[Settlement], lease_ms: int, claim_next: int = 0, backoff_s: float = 0.0
    ) -> int:
        return self._nowait("settle", self._settle_args(worker, settlements, lease_ms, claim_next, backoff_s))

    def result(self, ticket: int) -> Claim:
        """The Claim answering a claim_nowait or settle_nowait ticket."""
        if ticket in self._results:
            name, reply = self._results.pop(ticket)
        else:
            name = self._names.pop(ticket, "claim")
            reply = self._own.reply(ticket)  # type: ignore[union-attr]
        if name == "settle":
            return _claim_from(reply[1:], rejected=list(reply[0]))
        return _claim_from(reply, rejected=[])

    def _nowait(self, name: str, args: list[object]) -> int:
        if self._own is None:
            self._ticket += 1
            self._results[self._ticket] = (name, self._run(name, *args))
            return self._ticket
        ticket = self._own.evalsha_nowait(name, self.keys.script_keys(), self._argv(*args))
        self._names[ticket] = name
        return ticket

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
        return list(self._run("heartbeat", repr(self.clock()), lease_ms, worker or "", since, *leases))

    def leases_of(self, worker: str, since: int = 0) -> set[str]:
        """The live leases of ``worker`` numbered above ``since`` (see leases_issued)."""
        out = set()
        for lease in self.client.zrange(self.keys.inflight, 0, -1):
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
        returned, buried = self._run("reap", repr(self.clock() if now is None else now), limit)
        return ReapResult(int(returned), int(buried))

    def snapshot(self) -> Snapshot:
        """Task ids in each structure, the counters and the newest event id, read atomically.

        One instant for all of them, so their counts can be compared (see lua/snapshot.lua).
        """
        queued, running, scheduled, dead, stats, last_event, ledger = self._scripts["snapshot"](
            keys=self.keys.script_keys(), args=self._argv(), client=self.reader
        )
        return {
            "queued": queued,
            "running": running,
            "scheduled": scheduled,
            "dead": dead,
            "counters": _ints(stats),
            "last_event": last_event,
            "ledger": _ints(ledger),
        }

    def verify_lost(self, task_ids: Sequence[str]) -> list[str]:
        """Of ``task_ids``, those lost at one instant: out of the structure their status
        requires, hash missing, stuck waiting, or of unknown status (see lua/verify.lua)."""
        if not task_ids:
            return []
        return list(
            self._scripts["verify"](keys=self.keys.script_keys(), args=self._argv(*task_ids), client=self.reader)
        )

    def wait_for_work(self, timeout_s: float) -> bool:
        """Block until a wake-up signal arrives or ``timeout_s`` passes. No polling loop."""
        timeout = max(timeout_s, 0.001)
        if self._own is not None:
            return self._own.command("BLPOP", self.keys.signal, timeout) is not None
        return self.client.blpop([self.keys.signal], timeout=timeout) is not None

    # -- inspecting --------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        raw = self.client.hgetall(self.keys.stats)
        return {name: int(value) for name, value in raw.items()}

    def ledger_enqueued(self) -> int:
        """Tasks ever enqueued, as the ledger (Keys.ledger) counts them apart from the stats hash."""
        return int(self.client.hget(self.keys.ledger, "enqueued") or 0)

    def drained(self) -> bool:
        """True once every task the queue knows of is terminal (done, dead or cancelled);
        never for a stats hash without its 'created' sentinel (recreated after a loss)."""
        c = self.counters()
        total = c.get("total", 0)
        return (
            bool(c.get("created"))
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
        fields = self.client.hgetall(self.keys.task(task_id))
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

    def iter_task_hashes(self, fields: Sequence[str], chunk: int = 1000):
        """Yield (key, [values of ``fields``]) for every task hash of this queue."""
        batch: list[str] = []
        for key in self.reader.scan_iter(match=self.keys.task_pattern, count=chunk):
            batch.append(key)
            if len(batch) >= chunk:
                yield from self._hmget_all(batch, fields)
                batch = []
        if batch:
            yield from self._hmget_all(batch, fields)

    def _hmget_all(self, keys: list[str], fields: Sequence[str]):
        pipe = self.reader.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, list(fields))
        return zip(keys, pipe.execute(), strict=False)

    def events(self) -> list[dict[str, str]]:
        """The durable record: one entry per attempt outcome, oldest first."""
        return [dict(fields, entry=entry_id) for entry_id, fields in self.client.xrange(self.keys.events)]

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


_STATES: dict[int, Literal["ok", "missing", "lost", "stranded"]] = {-1: "missing", -2: "lost", -3: "stranded"}


def _ints(flat: list[str]) -> dict[str, int]:
    """A flat HGETALL reply of counters as a dict."""
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _claim_from(reply: list, rejected: list[str]) -> Claim:
    drained, next_due, lease, backlog, in_flight, *flat = reply
    code = int(drained)
    return Claim(
        state=_STATES.get(code, "ok"),
        backlog=int(backlog),
        claims_in_flight=int(in_flight),
        lease=lease or None,
        tasks=[
            Claimed(flat[i], flat[i + 1], flat[i + 2], int(flat[i + 3]), flat[i + 4], _limit(flat[i + 5]))
            for i in range(0, len(flat), 6)
        ],
        drained=code == 1,
        next_due=float(next_due) if next_due not in ("", None) else None,
        rejected=rejected,
    )


def _limit(raw: str) -> float | None:
    """A task's own time limit as claim.lua reports it ('' when it has none). A value
    that is not a positive number (a hash written by hand) is ignored, not fatal."""
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if 0 < value < float("inf") else None
