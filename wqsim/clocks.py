"""One time base for every host: a local clock corrected to Redis's ``TIME``.

The scripts stamp some moments with Redis's clock (a task's ``enqueued_at``),
a worker others with its own (an attempt's ``started_at``). Hosts' clocks
drift apart, so a worker whose clock runs 5 s fast would show every task
waiting 5 s longer than it did. A ServerClock reads the local clock (cheap, no
round trip) plus the offset measured against Redis once at connect and again
after a reconnect (the server may have restarted, or moved).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

Clock = Callable[[], float]


class ServerClock:
    """``local()`` plus the offset to Redis's clock, measured by ``sync``.

    Redis read its TIME at some instant between the local readings just before
    and just after the call, so the true offset lies between ``T - after`` and
    ``T - before``. The upper bound is kept: this clock then runs ahead of
    Redis's by at most one round trip, and never behind it, so a moment the
    worker stamps after Redis stamped a cause (a task's ``enqueued_at``, the
    release of a dependent) is never earlier than that cause. Of a few samples,
    the one with the shortest round trip is kept (a busy host can stall one
    for milliseconds). The other side is settle.lua's: no attempt is recorded
    as finishing after Redis records it.
    """

    SAMPLES = 5

    def __init__(self, local: Clock = time.time) -> None:
        self.local = local
        self.offset = 0.0  # Redis's time minus the local clock's, in seconds

    def __call__(self) -> float:
        return self.local() + self.offset

    def sync(self, client: redis.Redis) -> float:
        """Measure the offset against Redis's TIME; returns it."""
        best_rtt = float("inf")
        for _ in range(self.SAMPLES):
            before = self.local()
            seconds, micros = client.time()
            after = self.local()
            if after - before < best_rtt:
                best_rtt = after - before
                self.offset = seconds + micros / 1e6 - before
        return self.offset
