"""How long a queue keeps finished work: the retention policy.

Without one, every done task's hash (about 350 B) and every event stay in Redis
forever: 300,000 tasks left 104 MB. The policy bounds both, inside the scripts
that write them, so no sweeper has to run:

- settle.lua indexes each done task by the time it was recorded (Keys.done_index)
  and retires the oldest beyond ``keep_done``, or older than ``keep_done_s``:
  their hashes are deleted and the stats counter 'retired' (and the ledger's)
  counts them, so the counters keep their totals and the audit counts them as
  done and retired, not lost. A done task is kept while any of its dependents
  has not ended (it still needs the result): it goes to the back of the line.
- events go with the results they describe: once tasks are retired, entries
  older than the oldest done task kept are trimmed (XTRIM MINID ~), so the
  stream's size follows the tasks kept whatever the batch size (one 'done'
  entry lists every task of a settle call: 100 ids at batch 100). And every
  XADD caps the stream at about ``events_maxlen`` entries (MAXLEN ~), for
  queues that keep every done task or fail a lot. Both trim whole stream nodes
  only: cheap, and within about 100 entries of the bound on a real Redis
  (fakeredis does not trim approximately).

Dead and cancelled tasks are never retired: the dead-letter list is a to-do
list for an operator, not history.

The policy lives in Redis (Keys.retention), so every worker applies the same
one; ``Queue.set_retention`` writes it. A queue without one uses the defaults
below, mirrored in lua/_lib.lua (a test keeps the two equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_KEEP_DONE = 10_000
DEFAULT_EVENTS_MAXLEN = 100_000


def _count(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be an integer >= 0, or None to keep everything (got {value!r})")


@dataclass(frozen=True)
class Retention:
    """What a queue keeps of finished work; None keeps everything of that kind.

    keep_done: the newest N done tasks keep their hashes (0: retire each one as it
        is recorded, unless a dependent still needs it). Default 10,000: about
        3.5 MB, enough to inspect or chart any run the notebooks make.
    keep_done_s: done tasks recorded longer ago than this are retired (checked as
        later tasks are recorded). Default None: the count alone bounds memory.
    events_maxlen: the events stream is capped at about this many entries (it is
        also trimmed to the oldest done task kept, see above). Default 100,000:
        about 10 MB of one-task entries, ten times the done tasks kept, so the cap
        only bites when failures and retries dominate the history.
    """

    keep_done: int | None = DEFAULT_KEEP_DONE
    keep_done_s: float | None = None
    events_maxlen: int | None = DEFAULT_EVENTS_MAXLEN

    def __post_init__(self) -> None:
        _count("keep_done", self.keep_done)
        _count("events_maxlen", self.events_maxlen)
        if self.keep_done_s is not None and (
            isinstance(self.keep_done_s, bool)
            or not isinstance(self.keep_done_s, (int, float))
            or not 0 <= self.keep_done_s < math.inf
        ):
            raise ValueError(f"keep_done_s must be a finite number of seconds >= 0, or None (got {self.keep_done_s!r})")

    @classmethod
    def keep_everything(cls) -> Retention:
        """No retention: every hash and event stays (benchmarks that read every hash)."""
        return cls(keep_done=None, keep_done_s=None, events_maxlen=None)

    def to_fields(self) -> dict[str, str]:
        """The policy as Keys.retention stores it ('' turns a bound off)."""
        return {
            name: "" if value is None else repr(value)
            for name, value in (
                ("keep_done", self.keep_done),
                ("keep_done_s", self.keep_done_s),
                ("events_maxlen", self.events_maxlen),
            )
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Retention:
        """The policy a queue's scripts apply, from its stored fields (absent: the default)."""
        default = cls()

        def read(name: str, kind: type) -> object:
            if name not in fields:
                return getattr(default, name)
            raw = fields[name]
            return None if raw == "" else kind(float(raw)) if kind is int else kind(raw)

        return cls(read("keep_done", int), read("keep_done_s", float), read("events_maxlen", int))  # type: ignore[arg-type]

    def describe(self) -> str:
        parts = []
        parts.append("every done task" if self.keep_done is None else f"the newest {self.keep_done:,} done task(s)")
        if self.keep_done_s is not None:
            parts[-1] += f" recorded within {self.keep_done_s:g} s"
        parts.append("every event" if self.events_maxlen is None else f"about {self.events_maxlen:,} events")
        return "keeps " + " and ".join(parts)
