"""The listener: counts the workers' ``finished`` messages and the tasks' terminal outcomes,
exactly, even across a Redis outage.

Pub/sub keeps nothing: a message published while nobody listens (before the
listener subscribed, or while its connection is down) is gone. So every
message has a durable twin, a stream entry written by the same script call,
and names it first: "<entry-id> <status> <id> ..." on the progress channel
(the ``events`` stream) and "<entry-id> <worker-id>" on the finished channel
(the ``finishes`` stream).

The listener keeps a cursor per stream: the last entry it has accounted for.
Each time it subscribes (at start, and after losing its connection) it waits
for Redis to confirm, then catches up: it reads each stream past its cursor
and counts those entries as if they were messages. A message whose entry is
at or before the cursor has been counted already and is skipped. A script
writes and publishes atomically, so messages arrive in the stream's order and
one cursor per stream is enough. A message without an entry id (published by
hand, or by the Go original) is counted as it comes.

The Go original subscribed after starting its workers, so a fast worker's
message could be lost. Here ``start()`` returns only once Redis has confirmed
the subscription and the listener has caught up: start it first, then the workers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .connection import RedisUnavailable
from .keys import Keys, event_ids
from .streams import ENTRY_ID, EntryId, entries, entry_after, parse_entry_id

log = logging.getLogger("wqsim.listener")

ProgressCallback = Callable[[str, str], None]  # (status, task id)
TERMINAL_EVENTS = frozenset({"done", "dead", "cancelled"})  # the events entries the progress channel announces
POLL_S = 0.25  # longest wait for a message before checking should_stop and the deadline
IDLE_EVERY_S = 1.0  # on_idle runs at least this often, also while messages keep coming
BACKOFF_S = (0.05, 2.0)
# Builtin TimeoutError: Redis accepted the connection but never confirmed the subscription.
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, TimeoutError)


@dataclass(frozen=True)
class ListenResult:
    finished: list[str]  # worker ids, in the order they finished
    missing: list[str]  # expected worker ids that never reported (on timeout)
    timed_out: bool
    progress: dict[str, int]  # terminal task outcomes seen: {'done': n, 'dead': m}
    stopped: bool = False  # wait() returned early because should_stop() said so


def _split_entry(data: str) -> tuple[EntryId | None, str]:
    """A message's entry id (None if it names none) and the rest of it."""
    head, _, rest = data.partition(" ")
    match = ENTRY_ID.match(head)
    if match is None or not rest:  # a lone token is a plain worker id, even one shaped like "1-2"
        return None, data
    return (int(match[1]), int(match[2])), rest


def _without_retries(client: redis.Redis) -> tuple[redis.Redis, redis.ConnectionPool]:
    """A client like ``client`` on a pool of its own, whose connections do not retry.

    redis-py's default retries hold one failing call for seconds while Redis is
    down, and reconnect a subscription behind the caller's back. The listener
    times its reconnects itself (see ``reconnect_s``) and must know of each one
    to catch up, so every failure has to reach it at once.
    """
    pool = client.connection_pool
    # The pool adds these per pool; copied, they would tie the new pool to the old one.
    per_pool = ("maint_notifications_pool_handler", "himport_registry")
    kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in per_pool}
    own = redis.ConnectionPool(connection_class=pool.connection_class, **{**kwargs, "retry": Retry(NoBackoff(), 0)})
    return redis.Redis(connection_pool=own), own


class Listener:
    """Subscribe (and catch up) with ``start()``, then ``wait()`` for ``expected`` workers to finish.

    expected: a number of workers, or their ids (then a timeout names the missing ones);
        None listens until stopped (``wqsim listen``, where workers come and go).
    on_progress: called with (status, task id) for each terminal task outcome.
    since: where counting starts: "now" (the default: what happens after start(), as plain
        pub/sub would see it), "0" (replay each stream's whole record), or an entry id.
    reconnect_s: how long a lost connection is retried before RedisUnavailable is raised.
    """

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        expected: int | Sequence[str] | None,
        logger: logging.Logger | None = None,
        on_progress: ProgressCallback | None = None,
        since: str = "now",
        reconnect_s: float = 60.0,
    ) -> None:
        self.keys = Keys(queue)
        self.client = client
        self.open_ended = expected is None
        self.expected_ids = [str(x) for x in expected] if not isinstance(expected, (int, type(None))) else []
        self.expected = expected if isinstance(expected, int) else len(self.expected_ids)
        if not self.open_ended and self.expected < 1:
            raise ValueError(f"expected must be at least 1 worker (got {expected!r})")
        if since != "now":
            parse_entry_id(since)  # a bad value fails here, not at start()
        if not reconnect_s >= 0:
            raise ValueError(f"reconnect_s must be >= 0 (got {reconnect_s!r})")
        self.since = since
        self.reconnect_s = reconnect_s
        self.log = logger or log
        self.on_progress = on_progress
        self.finished: list[str] = []
        self.progress: dict[str, int] = {"done": 0, "dead": 0}
        self._redis, self._pool = _without_retries(client)
        self._pubsub: redis.client.PubSub | None = None
        self._cursors: dict[str, EntryId] | None = None  # stream key -> last entry accounted for

    # -- connecting ------------------------------------------------------------------
    def start(self, timeout_s: float = 5.0) -> Listener:
        """Subscribe, wait for Redis to confirm both subscriptions, then catch up from the streams.

        Rides out an outage of up to ``reconnect_s`` like ``wait()`` does;
        ``timeout_s`` bounds each wait for a confirmation.
        """
        try:
            caught = self._connect(timeout_s)
        except RETRYABLE as exc:
            self._reconnect(exc, timeout_s)
        else:
            if caught and self.since != "now":
                self.log.info("Listener replayed %d event(s) from the streams", caught)
        return self

    def _connect(self, timeout_s: float) -> int:
        """Subscribe, await both confirmations, catch up; returns how many outcomes and finishes were counted."""
        self._close_pubsub()
        if self._cursors is None:
            self._cursors = self._starting_cursors()
        self._pubsub = self._redis.pubsub()
        self._pubsub.subscribe(self.keys.finished_channel, self.keys.progress_channel)
        confirmed = 0
        deadline = time.monotonic() + timeout_s
        while confirmed < 2:
            message = self._pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
            if message is None and time.monotonic() >= deadline:
                raise TimeoutError(f"no subscription confirmation from Redis within {timeout_s:g} s")
            if message and message["type"] == "subscribe":
                confirmed += 1
        return self._catch_up()

    def _starting_cursors(self) -> dict[str, EntryId]:
        streams = (self.keys.events, self.keys.finishes)
        if self.since != "now":
            return dict.fromkeys(streams, parse_entry_id(self.since))
        cursors = {}
        for stream in streams:
            last = self._redis.xrevrange(stream, count=1)
            cursors[stream] = parse_entry_id(str(last[0][0])) if last else (0, 0)
        return cursors

    def _reconnect(
        self,
        error: Exception,
        confirm_s: float = 5.0,
        deadline: float = float("inf"),
        should_stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> bool:
        """After ``error``: resubscribe and catch up, with capped exponential backoff.

        Returns True once back, False if ``should_stop()`` or the wait's
        ``deadline`` came first; raises RedisUnavailable after ``reconnect_s``.
        """
        self.log.warning(
            "Listener lost its Redis connection (%s); reconnecting for up to %g s", error, self.reconnect_s
        )
        self._close_pubsub()
        give_up = time.monotonic() + self.reconnect_s
        delay_s = BACKOFF_S[0]
        while True:
            if not self._pause(min(delay_s, max(give_up - time.monotonic(), 0.0)), deadline, should_stop, on_idle):
                return False
            try:
                caught = self._connect(confirm_s)
            except RETRYABLE as exc:
                error = exc
                self._close_pubsub()
            else:
                self.log.info("Listener reconnected; caught up %d event(s) from the stream", caught)
                return True
            if time.monotonic() >= give_up:
                raise RedisUnavailable(
                    f"the listener on queue {self.keys.queue!r} could not reach Redis "
                    f"for {self.reconnect_s:g} s: {error}"
                )
            delay_s = min(delay_s * 2, BACKOFF_S[1])

    @staticmethod
    def _pause(
        seconds: float, deadline: float, should_stop: Callable[[], bool] | None, on_idle: Callable[[], None] | None
    ) -> bool:
        """Sleep ``seconds`` in slices of at most POLL_S; False if told to stop or past ``deadline``."""
        until = time.monotonic() + seconds
        while True:
            if (should_stop is not None and should_stop()) or time.monotonic() >= deadline:
                return False
            left = until - time.monotonic()
            if left <= 0:
                return True
            if on_idle is not None:
                on_idle()
            time.sleep(min(left, POLL_S))

    # -- counting ----------------------------------------------------------------------
    def _catch_up(self) -> int:
        """Count the entries past each cursor; returns how many outcomes and finishes that was.

        The finishes are read first and counted last: every task outcome recorded
        before a worker's finish is then counted before it, as the messages
        would have been, so wait() never stops short of outcomes it could know.
        """
        finishes = list(self._entries_after(self.keys.finishes))
        caught = 0
        for entry, fields in self._entries_after(self.keys.events):
            if self._advance(self.keys.events, entry) and fields.get("event") in TERMINAL_EVENTS:
                caught += self._count_outcomes(fields["event"], event_ids(fields["event"], fields["id"]))
        for entry, fields in finishes:
            if self._advance(self.keys.finishes, entry):
                self._count_finish(fields["worker"])
                caught += 1
        return caught

    def _entries_after(self, stream: str) -> Iterator[tuple[EntryId, dict[str, str]]]:
        """The entries of ``stream`` after its cursor, oldest first, read in pages."""
        assert self._cursors is not None
        for entry_id, fields in entries(self._redis, stream, start=entry_after(self._cursors[stream])):
            yield parse_entry_id(entry_id), fields

    def _advance(self, stream: str, entry: EntryId | None) -> bool:
        """True if ``entry`` is new (past the cursor, which moves to it); None (no entry id) is always new."""
        assert self._cursors is not None
        if entry is None:
            return True
        if entry <= self._cursors[stream]:
            return False
        self._cursors[stream] = entry
        return True

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            if message["data"] == 2:  # subscribed again on a new connection: what was missed is in the streams
                self.log.info("Listener reconnected; caught up %d event(s) from the stream", self._catch_up())
            return
        if message["type"] != "message":
            return
        entry, body = _split_entry(str(message["data"]))
        if message["channel"] == self.keys.progress_channel:
            if self._advance(self.keys.events, entry):
                status, _, task_ids = body.partition(" ")
                self._count_outcomes(status, event_ids(status, task_ids))
        elif self._advance(self.keys.finishes, entry):
            self._count_finish(body)

    def _count_outcomes(self, status: str, task_ids: list[str]) -> int:
        self.progress[status] = self.progress.get(status, 0) + len(task_ids)
        if self.on_progress:
            for task_id in task_ids:
                self.on_progress(status, task_id)
        return len(task_ids)

    def _count_finish(self, worker: str) -> None:
        self.finished.append(worker)
        if self.open_ended:
            self.log.info("Received finished message from worker %s (%d so far)", worker, len(self.finished))
        else:
            self.log.info(
                "Received finished message from worker %s. %d/%d workers finished",
                worker,
                len(self.finished),
                self.expected,
            )

    def _drain_before_stopping(self) -> None:
        """Count what was recorded before the stop (or the deadline), though its messages may still be unread.

        A listener stopped just after the last worker exits (``wqsim listen`` under
        SIGTERM) would otherwise miss a finish still buffered on its socket; the
        streams hold every outcome and finish, so one catch-up reads them all.
        """
        if self._cursors is None:  # never connected: nothing to read
            return
        with contextlib.suppress(*RETRYABLE):  # Redis gone: stop with what was counted
            caught = self._catch_up()
            if caught:
                self.log.info("Listener stopping; counted %d event(s) recorded before the stop", caught)

    # -- waiting -----------------------------------------------------------------------
    def wait(
        self,
        timeout_s: float | None,
        should_stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> ListenResult:
        """Count messages until all expected workers finished or ``timeout_s`` passed
        (None: no limit; an open-ended listener then runs until interrupted or stopped).

        should_stop: checked at least every POLL_S; once it returns True, wait()
            returns early (``stopped=True``, not logged as an error).
        on_idle: called at least once a second, and whenever POLL_S passes without a
            message: a progress printer can flush its last count without a new message.
        """
        if self._pubsub is None:
            self.start()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else float("inf"))
        stopped = False
        idled = time.monotonic()
        try:
            while self.open_ended or len(self.finished) < self.expected:
                if should_stop is not None and should_stop():
                    stopped = True
                    self._drain_before_stopping()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._drain_before_stopping()  # what the streams already hold is no timeout
                    break
                message = None
                try:
                    assert self._pubsub is not None
                    message = self._pubsub.get_message(timeout=min(remaining, POLL_S))
                    if message:
                        self._on_message(message)
                except RETRYABLE as exc:
                    if not self._reconnect(exc, deadline=deadline, should_stop=should_stop, on_idle=on_idle):
                        stopped = should_stop is not None and should_stop()
                        break
                if on_idle is not None and (message is None or time.monotonic() - idled >= IDLE_EVERY_S):
                    on_idle()
                    idled = time.monotonic()
        finally:
            self.close()
        return self._result(timeout_s, stopped)

    def _result(self, timeout_s: float | None, stopped: bool) -> ListenResult:
        progress = dict(self.progress)
        if self.open_ended:
            return ListenResult(list(self.finished), [], False, progress, stopped)
        short = len(self.finished) < self.expected
        missing = [w for w in self.expected_ids if w not in self.finished]
        if short and not stopped:
            who = f": {', '.join(missing)}" if missing else ""
            self.log.error(
                "Listener timed out after %.1f s; %d of %d workers did not finish%s",
                timeout_s,
                self.expected - len(self.finished),
                self.expected,
                who,
            )
        elif not short:
            self.log.info("All workers finished.")
        return ListenResult(list(self.finished), missing, short and not stopped, progress, stopped)

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(*RETRYABLE):  # closing a dead connection: nothing left to release
                self._pubsub.close()
            self._pubsub = None

    def close(self) -> None:
        """Unsubscribe and close this listener's connections (the caller's client is untouched)."""
        self._close_pubsub()
        self._pool.disconnect()


class Listeners:
    """The listeners of a sharded queue's shards (see wqsim.shards), waited on as one.

    Every worker serves every shard and says so on each when it finishes, so each
    shard's listener expects every worker; the run is over when all of them have
    heard all workers. One listener (one shard) is simply that listener.
    """

    def __init__(self, listeners: list[Listener]) -> None:
        self.listeners = listeners

    def start(self) -> Listeners:
        for listener in self.listeners:
            listener.start()
        return self

    def wait(
        self,
        timeout_s: float | None,
        should_stop: Callable[[], bool] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> ListenResult:
        """Wait on each shard's listener in turn, within one deadline; their results combined.

        A shard whose Redis stays unreachable does not end the wait for the others (their
        workers go on): once they are all heard, RedisUnavailable names every lost shard.
        """
        if len(self.listeners) == 1:
            return self.listeners[0].wait(timeout_s, should_stop=should_stop, on_idle=on_idle)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        results = []
        lost: dict[str, RedisUnavailable] = {}
        for listener in self.listeners:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                results.append(listener.wait(left, should_stop=should_stop, on_idle=on_idle))
            except RedisUnavailable as exc:
                lost[listener.keys.queue] = exc
        if lost:
            first = next(iter(lost.values()))
            raise RedisUnavailable(
                f"shard(s) {', '.join(lost)} lost ({first}); "
                f"the other {len(self.listeners) - len(lost)} of {len(self.listeners)} shards finished"
            )
        progress: dict[str, int] = {}
        for result in results:
            for status, count in result.progress.items():
                progress[status] = progress.get(status, 0) + count
        finished = [w for w in results[0].finished if all(w in r.finished for r in results[1:])]
        missing = sorted({w for r in results for w in r.missing})
        return ListenResult(
            finished,
            missing,
            any(r.timed_out for r in results),
            progress,
            any(r.stopped for r in results),
        )

    def close(self) -> None:
        for listener in self.listeners:
            listener.close()
