"""How wqsim's script calls reach Redis: pipelined down a private connection, or through the pool.

A busy worker talks to Redis once per task, so the client's cost per call
matters as much as the round trip. ``Pipelined`` keeps one connection for
the calling thread and may send several requests in one write, reading
their replies later, in order, by ticket: a worker hands Redis its finished
work and its request for more, then goes on working while Redis answers.
``Pooled`` has the same interface and simply runs each request at once
through the ordinary redis-py client: thread-safe, one round trip each.

Both are built on public redis-py APIs only (``ConnectionPool.get_connection``
and ``release``, ``send_packed_command``, ``read_response``, ``can_read``,
``disconnect``), so they run unchanged on real Redis and on in-process
fakeredis (whose connection processes a write's commands in order as it
receives them; a BLPOP there blocks the write rather than the read, which
a caller cannot tell apart).

A request names its decoder (see wqsim.replies): a ticket's reply comes back
already decoded into a named result.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar, cast
from weakref import WeakKeyDictionary

import redis

from .replies import Reply
from .scripts import scripts_for

_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis packs a whole command in C; redis-py's packer encodes argument by argument
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency, but stay correct without it
    _pack = None

T = TypeVar("T")

# What a dropped or reset connection raises: the request may or may not have run.
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)


def _as_is(reply: Reply) -> Reply:
    return reply


class Request(NamedTuple, Generic[T]):
    """One command to send, and how to decode its reply (a tuple: one is made per call)."""

    command: tuple[object, ...]
    decode: Callable[[Reply], T]
    script: str | None = None  # the script an EVALSHA runs: loaded again if Redis lacks it


def script_commands(client: redis.Redis, keys: list[str], argv_head: list[object]) -> dict[str, tuple[object, ...]]:
    """Each of wqsim's scripts (see wqsim.scripts) as the EVALSHA command that calls it, up to
    the arguments of one call: ``keys`` and the ARGV every call starts with.

    Built once per queue: claims and settles are on every task's path.
    """
    return {name: ("EVALSHA", s.sha, len(keys), *keys, *argv_head) for name, s in scripts_for(client).items()}


def plain(*command: object) -> Request[Reply]:
    """A plain Redis command, its reply undecoded."""
    return Request(command, _as_is)


class Ticket(Generic[T]):
    """A request sent without waiting; hand it to ``reply`` for the decoded answer."""

    __slots__ = ("decode", "number")

    def __init__(self, number: int, decode: Callable[[Reply], T]) -> None:
        self.number = number
        self.decode = decode


class Wire(Protocol):
    """The public methods of a redis-py connection that Pipelined uses, and no others
    (redis-py leaves them unannotated: this is their type here)."""

    def pack_command(self, *args: Any) -> list[bytes]: ...

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> list[bytes]: ...

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None: ...

    def read_response(self) -> Any: ...

    def can_read(self, timeout: float = 0) -> bool: ...

    def disconnect(self) -> None: ...


class Transport(Protocol):
    """What Queue needs of a transport: Pipelined and Pooled both are one."""

    def call(self, request: Request[T]) -> T: ...

    def send(self, *requests: Request[Any]) -> list[Ticket[Any]]: ...

    def reply(self, ticket: Ticket[T]) -> T: ...

    def close(self) -> None: ...


_tolerant: WeakKeyDictionary[redis.Redis, redis.Redis] = WeakKeyDictionary()


def tolerant(client: redis.Redis) -> redis.Redis:
    """``client``, or one like it (made once, on a pool of its own) that decodes with surrogateescape.

    Task fields are anyone's bytes: a reply holding bytes that are not UTF-8 must
    still be read whole (the worker then refuses that task, see wqsim.decoding),
    never fail half-read with the claim already made. The pool's own setting is
    what reaches the parser (hiredis or not) when a connection connects.
    """
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if not kwargs.get("decode_responses") or kwargs.get("encoding_errors") == "surrogateescape":
        return client
    found = _tolerant.get(client)
    if found is None:
        per_pool = ("maint_notifications_pool_handler", "himport_registry")  # tied to the pool they were made for
        kwargs = {k: v for k, v in kwargs.items() if k not in per_pool}
        found = _tolerant[client] = redis.Redis(
            connection_pool=type(pool)(
                connection_class=pool.connection_class,
                max_connections=pool.max_connections,
                **{**kwargs, "encoding_errors": "surrogateescape"},
            )
        )
    return found


def transaction(client: redis.Redis, requests: list[Request[Any]]) -> list[Reply | redis.RedisError]:
    """Run ``requests`` in one MULTI/EXEC, one round trip; replies undecoded, errors in place.

    If Redis lacks a script, every EVALSHA of it fails without writing (all of a
    transaction's calls are of scripts it lacks, or none are): the scripts are
    loaded and the transaction sent once more.
    """
    for attempt in range(2):
        pipe = client.pipeline(transaction=True)
        for request in requests:
            pipe.execute_command(*request.command)
        replies: list[Reply | redis.RedisError] = pipe.execute(raise_on_error=False)
        unrun = {
            r.script
            for r, reply in zip(requests, replies, strict=True)
            if isinstance(reply, redis.exceptions.NoScriptError)
        }
        if not unrun or attempt:
            return replies
        for name in sorted(n for n in unrun if n is not None):
            client.script_load(scripts_for(client)[name].script)
    raise AssertionError("unreachable")


class Pooled:
    """Each request runs at once through the client's pool: safe to share between threads.

    ``send`` returns tickets for replies it already has, so code written for
    ``Pipelined`` runs unchanged here, one round trip per request.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._replies: dict[int, Reply] = {}
        self._tickets = 0

    def call(self, request: Request[T]) -> T:
        execute: Callable[..., Reply] = self.client.execute_command
        try:
            reply = execute(*request.command)
        except redis.exceptions.NoScriptError:  # first use, or the server restarted
            assert request.script is not None  # only EVALSHA raises it
            self.client.script_load(scripts_for(self.client)[request.script].script)
            reply = execute(*request.command)
        return request.decode(reply)

    def send(self, *requests: Request[Any]) -> list[Ticket[Any]]:
        tickets: list[Ticket[Any]] = []
        for request in requests:
            self._tickets += 1
            self._replies[self._tickets] = self.call(request)
            tickets.append(Ticket(self._tickets, _as_is))  # decoded already
        return tickets

    def reply(self, ticket: Ticket[T]) -> T:
        return ticket.decode(self._replies.pop(ticket.number))

    def close(self) -> None:
        self._replies.clear()


class Pipelined:
    """A connection that one thread keeps for itself: requests pipelined, replies read by ticket.

    Going through ``redis.Redis.execute_command`` costs about as much client
    time as a loopback round trip (pool checkout, retries, instrumentation);
    a worker that talks to Redis once per task sends straight down a
    connection of its own instead. Errors still surface as redis-py
    exceptions, so callers' reconnect logic is the same for both transports.

    ``check_stale``, for a producer's connection, which may sit idle and may
    be inherited by a forked child: before each request, a child opens its
    own (never writing to its parent's socket), and a connection the server
    closed meanwhile (a restart, an idle timeout) is replaced rather than
    failing after sending. A worker's loop, busy and never forked, skips both.
    """

    def __init__(self, client: redis.Redis, check_stale: bool = False) -> None:
        self.client = client
        self.check_stale = check_stale
        self.pid = os.getpid()
        self._pool = tolerant(client).connection_pool
        self.conn: Wire | None = None
        self._pending: deque[tuple[int, Request[Any]]] = deque()  # sent, reply not read yet
        self._replies: dict[int, Reply | redis.RedisError] = {}  # read, by ticket number
        self._tickets = 0

    # -- the connection ---------------------------------------------------------------
    def _connection(self) -> Wire:
        """The connection, taken from the pool on first use with every script loaded.

        Loading up front matters for pipelining: a request sent ahead for a
        script the server lacks fails, and sending it again would put it
        behind requests sent after it (``_read`` copes, but rarely has to).
        """
        if self.check_stale and self.pid != os.getpid():  # a forked child: never touch the parent's socket
            self.conn, self.pid = None, os.getpid()
            self._pending.clear()
            self._replies.clear()
        if self.conn is None:
            conn = cast(Wire, self._pool.get_connection())
            try:
                scripts = scripts_for(self.client).values()
                conn.send_packed_command(conn.pack_commands([("SCRIPT", "LOAD", s.script) for s in scripts]))
                for _ in scripts:
                    conn.read_response()
            except BaseException:
                self._give_back(conn, broken=True)
                raise
            self.conn = conn
        elif self.check_stale and not self._pending and self._stale(self.conn):
            self.close()
            return self._connection()
        return self.conn

    @staticmethod
    def _stale(conn: Wire) -> bool:
        """An idle connection has nothing to read unless the server closed it."""
        try:
            return conn.can_read(timeout=0)
        except redis.ConnectionError:
            return True

    def _give_back(self, conn: Wire, broken: bool) -> None:
        """Return the connection to the pool (its slot is reused), closed if replies are unread."""
        if broken:
            conn.disconnect()
        self._pool.release(cast(Any, conn))  # the very object get_connection() gave

    def __del__(self) -> None:
        """A Pipelined dropped without close() (a Queue gone out of scope, a producer thread
        that ended) still hands its connection back, so the pool's slot is not lost."""
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Hand the connection back. Replies not yet read are lost: their leases expire and
        the reaper returns those tasks."""
        if self.conn is not None and self.pid == os.getpid():
            self._give_back(self.conn, broken=bool(self._pending))
        self.conn = None
        self._pending.clear()
        self._replies.clear()

    # -- sending and reading --------------------------------------------------------------
    def call(self, request: Request[T]) -> T:
        """Send one request and wait for its reply."""
        ticket: Ticket[T] = self.send(request)[0]
        return self.reply(ticket)

    def send(self, *requests: Request[Any]) -> list[Ticket[Any]]:
        """Send ``requests`` in one write, so Redis reads them together; returns their tickets."""
        conn = self._connection()
        if _pack is not None and len(requests) == 1:  # the common case, on every task's path
            packed = _pack(requests[0].command)
        else:
            pack = _pack
            packed = b"".join(pack(r.command) if pack else b"".join(conn.pack_command(*r.command)) for r in requests)
        try:
            conn.send_packed_command([packed], check_health=False)
        except CONNECTION_ERRORS:
            self.close()
            raise
        tickets = []
        for request in requests:
            self._tickets += 1
            self._pending.append((self._tickets, request))
            tickets.append(Ticket(self._tickets, request.decode))
        return tickets

    def reply(self, ticket: Ticket[T]) -> T:
        """The decoded reply for ``ticket``, reading (in order) every reply sent before it."""
        self._read(until=ticket.number)
        if ticket.number not in self._replies:
            raise redis.ConnectionError("the connection was reset before this reply was read")
        reply = self._replies.pop(ticket.number)
        if isinstance(reply, redis.RedisError):
            raise reply
        return ticket.decode(reply)

    def _read(self, until: int) -> None:
        """Read replies up to ticket ``until``; an error reply is kept for its own ticket.

        A NOSCRIPT reply (SCRIPT FLUSH, or a restart, since the scripts were
        loaded) means that request did not run, nor most likely did those sent
        after it: all are read first, then the unrun ones are sent again in
        their order.
        """
        unrun: list[tuple[int, Request[Any]]] = []
        while self._pending and (self._pending[0][0] <= until or unrun):
            number, request = self._pending.popleft()
            try:
                if self.conn is None:
                    raise redis.ConnectionError("the connection was closed with replies unread")
                self._replies[number] = self.conn.read_response()
            except redis.exceptions.NoScriptError:
                unrun.append((number, request))
            except redis.ResponseError as exc:  # the command's own error: its ticket raises it
                self._replies[number] = exc
            except CONNECTION_ERRORS:
                self.close()  # what was in flight is lost
                raise
        for number, request in unrun:
            assert request.script is not None  # only EVALSHA raises NOSCRIPT
            loaded = self._send_now(("SCRIPT", "LOAD", scripts_for(self.client)[request.script].script))
            if isinstance(loaded, redis.RedisError):
                raise loaded
            self._replies[number] = self._send_now(request.command)

    def _send_now(self, command: tuple[object, ...]) -> Reply | redis.RedisError:
        """One command and its reply (or error reply), with nothing else in flight."""
        number = self.send(Request(command, _as_is))[0].number
        self._read(until=number)
        return self._replies.pop(number)
