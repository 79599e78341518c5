"""The pub/sub listener: counts the workers' ``finished`` messages.

The Go original subscribed after starting its workers, so a fast worker's
message could be published before anyone listened, and pub/sub does not keep
messages. Here ``start()`` returns only once Redis has confirmed the
subscription; start the listener first, then the workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from .keys import Keys

log = logging.getLogger("wqsim.listener")

ProgressCallback = Callable[[str, str], None]  # (status, task id)


@dataclass(frozen=True)
class ListenResult:
    finished: list[str]       # worker ids, in the order their messages arrived
    missing: list[str]        # expected worker ids that never reported (on timeout)
    timed_out: bool
    progress: dict[str, int]  # terminal task outcomes seen: {'done': n, 'dead': m}


class Listener:
    """Subscribe with ``start()``, then ``wait()`` for ``expected`` finished messages.

    expected: a number of workers, or their ids (then a timeout names the missing ones);
        None listens until stopped (``wqsim listen``, where workers come and go).
    on_progress: called with (status, task id) for each terminal task outcome.
    """

    def __init__(
        self,
        client: redis.Redis,
        queue: str,
        expected: int | Sequence[str] | None,
        logger: logging.Logger | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self.keys = Keys(queue)
        self.client = client
        self.open_ended = expected is None
        self.expected_ids = [str(x) for x in expected] if not isinstance(expected, (int, type(None))) else []
        self.expected = expected if isinstance(expected, int) else len(self.expected_ids)
        if not self.open_ended and self.expected < 1:
            raise ValueError(f"expected must be at least 1 worker (got {expected!r})")
        self.log = logger or log
        self.on_progress = on_progress
        self._pubsub: redis.client.PubSub | None = None

    def start(self, timeout_s: float = 5.0) -> Listener:
        """Subscribe and wait for Redis to confirm both subscriptions."""
        pubsub = self.client.pubsub()
        pubsub.subscribe(self.keys.finished_channel, self.keys.progress_channel)
        confirmed = 0
        deadline = time.monotonic() + timeout_s
        while confirmed < 2:
            message = pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
            if message is None and time.monotonic() >= deadline:
                pubsub.close()
                raise TimeoutError(f"no subscription confirmation from Redis within {timeout_s} s")
            if message and message["type"] == "subscribe":
                confirmed += 1
        self._pubsub = pubsub
        return self

    def wait(self, timeout_s: float | None) -> ListenResult:
        """Count finished messages until all expected workers reported or ``timeout_s`` passed
        (None: no limit; an open-ended listener then runs until interrupted)."""
        if self._pubsub is None:
            self.start()
        assert self._pubsub is not None
        finished: list[str] = []
        progress = {"done": 0, "dead": 0}
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else float("inf"))
        try:
            while self.open_ended or len(finished) < self.expected:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                message = self._pubsub.get_message(timeout=min(remaining, 1.0))
                if not message or message["type"] != "message":
                    continue
                if message["channel"] == self.keys.progress_channel:
                    status, *task_ids = str(message["data"]).split(" ")  # one message per settle call
                    progress[status] = progress.get(status, 0) + len(task_ids)
                    if self.on_progress:
                        for task_id in task_ids:
                            self.on_progress(status, task_id)
                    continue
                worker = str(message["data"])
                finished.append(worker)
                if self.open_ended:
                    self.log.info("Received finished message from worker %s (%d so far)", worker, len(finished))
                    continue
                self.log.info(
                    "Received finished message from worker %s. %d/%d workers finished",
                    worker, len(finished), self.expected,
                )
        finally:
            self.close()
        if self.open_ended:
            return ListenResult(finished, [], False, progress)
        timed_out = len(finished) < self.expected
        missing = [w for w in self.expected_ids if w not in finished]
        if timed_out:
            who = f": {', '.join(missing)}" if missing else ""
            self.log.error(
                "Listener timed out after %.1f s; %d of %d workers did not finish%s",
                timeout_s, self.expected - len(finished), self.expected, who,
            )
        else:
            self.log.info("All workers finished.")
        return ListenResult(finished, missing, timed_out, progress)

    def close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None
