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

    The offset is taken at the midpoint of the TIME round trip, so it is
    right to within half a round trip: well under a millisecond on a LAN.
    """

    def __init__(self, local: Clock = time.time) -> None:
        self.local = local
        self.offset = 0.0  # Redis's time minus the local clock's, in seconds

    def __call__(self) -> float:
        return self.local() + self.offset

    def sync(self, client: redis.Redis) -> float:
        """Measure the offset against Redis's TIME; returns it."""
        before = self.local()
        seconds, micros = client.time()
        after = self.local()
        self.offset = seconds + micros / 1e6 - (before + after) / 2
        return self.offset
