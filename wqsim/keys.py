"""Every Redis key and channel name of a queue, built in one place.

All names share the prefix ``wqsim:{<queue>}:``. The braces are a Redis
Cluster hash tag: every key of one queue hashes to the same slot, so a Lua
script may touch any of them atomically, even on a cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import overload

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# A shard of a queue (see wqsim.shards): "<queue>:<index>". Queue names never contain ':',
# so a shard's keys ("wqsim:{q:3}:...") can never be another queue's, and each shard has a slot of its own.
SHARD_SEPARATOR = ":"
SHARD_NAME = re.compile(rf"^(?P<queue>{QUEUE_NAME.pattern[1:-1]}){SHARD_SEPARATOR}(?P<index>\d{{1,4}})$")


def shard_name(queue: str, index: int) -> str:
    """The queue name of shard ``index`` of ``queue``: ``shard_name("q", 3) == "q:3"``."""
    return f"{queue}{SHARD_SEPARATOR}{index}"


# Task and worker ids: no ':' (package entries), '#' or '@' (lease ids), no glob characters.
ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_id(what: str, value: str) -> str:
    """Return ``value`` if it is a valid task or worker id, else raise ValueError naming it."""
    if not isinstance(value, str) or not ID.match(value):
        raise ValueError(f"{what} must be 1-128 characters of letters, digits, '_', '.' or '-' (got {value!r})")
    return value


class IdRange(Sequence[str]):
    """Consecutive numeric task ids "first".."last", without holding them all in memory.

    What ``generate`` returns: 10,000,000 ids as a list would take about 600 MB.
    It compares equal to any sequence of the same ids (``ids == ["1", "2"]``).
    """

    __slots__ = ("_range",)

    def __init__(self, first: int, last: int) -> None:
        self._range = range(first, last + 1)

    def __len__(self) -> int:
        return len(self._range)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            part = self._range[index]
            return [str(i) for i in part]
        return str(self._range[index])

    def __iter__(self) -> Iterator[str]:
        return map(str, self._range)

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and value.isascii() and value.isdigit() and int(value) in self._range

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdRange):
            return self._range == other._range
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=False))
        return NotImplemented

    def __add__(self, other: Sequence[str]) -> list[str]:  # concatenates like the list it stands for
        return [*self, *other]

    def __radd__(self, other: Sequence[str]) -> list[str]:
        return [*other, *self]

    def __repr__(self) -> str:
        if len(self) <= 10:
            return repr(list(self))
        return f"IdRange({self._range.start}..{self._range.stop - 1})"

    def chunks(self, size: int) -> Iterator[list[str]]:
        """The ids, ``size`` at a time."""
        for start in range(self._range.start, self._range.stop, size):
            yield [str(i) for i in range(start, min(start + size, self._range.stop))]


def event_ids(event: str, ids: str) -> list[str]:
    """The task ids an events entry (or progress message) names after its event. A 'done' entry
    lists every task one settle call finished, separated by spaces, which ids cannot hold (ID;
    claim.lua refuses a hand-pushed id outside it). Any other entry names one task: taken
    whole, whatever it holds, so a hand-pushed id with a space in it is still one task."""
    if not ids:
        return []  # an entry naming no task (a note written by hand)
    return ids.split(" ") if event == "done" else [ids]


# How a work package appears in the ready list: "pkg:<package id>" (task ids never contain ':').
# The Lua scripts get this spelling from here (see lua_constants), not a copy of their own.
PACKAGE_ENTRY_PREFIX = "pkg:"


def package_entry(package_id: str) -> str:
    """The ready-list entry standing for work package ``package_id``."""
    return PACKAGE_ENTRY_PREFIX + package_id


def parse_lease(lease_id: str) -> tuple[str, int, str]:
    """A lease id "<worker>#<n>[@<package>]" as (worker id, lease number, package id or '')."""
    worker, _, rest = lease_id.partition("#")
    number, _, package = rest.partition("@")
    return worker, int(number) if number.isdigit() else 0, package


def worker_of(lease_id: str) -> str:
    """The worker a lease id names ('' for no lease). Lua's twin: lease_parts() in lua/_lib.lua."""
    return parse_lease(lease_id)[0]


def lua_constants() -> str:
    """Lua text defining the spellings above for the scripts (scripts.py puts it first)."""
    return f"local PACKAGE_ENTRY_PREFIX = {PACKAGE_ENTRY_PREFIX!r}\n"


@dataclass(frozen=True)
class Keys:
    """Names for one queue. ``Keys("demo").ready == "wqsim:{demo}:ready"``."""

    queue: str

    def __post_init__(self) -> None:
        if not isinstance(self.queue, str) or not (QUEUE_NAME.match(self.queue) or SHARD_NAME.match(self.queue)):
            raise ValueError(
                f"queue name must be 1-64 characters of letters, digits, '_', '.' or '-', "
                f"starting with a letter or digit (got {self.queue!r})"
            )

    @property
    def prefix(self) -> str:
        return f"wqsim:{{{self.queue}}}:"

    # Lists, sets and hashes shared by the whole queue.
    @property
    def ready(self) -> str:
        """LIST of task ids waiting to be claimed (LPUSH in, RPOP out: FIFO)."""
        return self.prefix + "ready"

    @property
    def inflight(self) -> str:
        """ZSET lease id -> lease deadline (epoch s); the reaper's index of live claims."""
        return self.prefix + "inflight"

    @property
    def delayed(self) -> str:
        """ZSET task id -> time (epoch s) a retry becomes due."""
        return self.prefix + "delayed"

    @property
    def dead(self) -> str:
        """LIST of task ids that failed for good (the dead-letter list)."""
        return self.prefix + "dead"

    @property
    def stats(self) -> str:
        """HASH of counters (total, done, dead, retried, expired, dropped, rejected, retired),
        the sequences that lease and package ids are drawn from, and the sentinel
        'created' = 1 that every enqueue writes: a stats hash without it was recreated
        by a counter increment after Redis lost it (see wqsim.storage)."""
        return self.prefix + "stats"

    @property
    def ledger(self) -> str:
        """HASH the durable twin of two counters, kept apart from ``stats`` so that losing one
        key still leaves a record that tasks existed: 'enqueued' (tasks ever enqueued) and
        'retired' (done tasks whose hashes the retention policy removed)."""
        return self.prefix + "ledger"

    @property
    def done_index(self) -> str:
        """ZSET task id -> when it was recorded done (Redis's clock, epoch s): the done tasks
        whose hashes are still kept, oldest first; the retention policy retires from its front."""
        return self.prefix + "done"

    @property
    def retention(self) -> str:
        """HASH the queue's retention policy (keep_done, keep_done_s, events_maxlen; see
        wqsim.retention). Absent fields take the defaults; '' turns one off."""
        return self.prefix + "retention"

    @property
    def layout(self) -> str:
        """HASH how a sharded queue is laid out: on the queue itself ``split_into``, the number of its
        shards; on each shard ``shards``, the same number. Roles given another are refused (wqsim.shards)."""
        return self.prefix + "layout"

    @property
    def producers(self) -> str:
        """SET of producers still adding tasks (an open-loop run's arrivals): while it has a
        member, the queue is not drained, even when every task so far is terminal, so workers
        do not exit between two arrivals. Redis deletes the set with its last member."""
        return self.prefix + "producers"

    @property
    def signal(self) -> str:
        """LIST holding at most one token; idle workers BLPOP it to wake up."""
        return self.prefix + "signal"

    @property
    def events(self) -> str:
        """STREAM with one entry per attempt outcome: the durable run record (and, in
        chaos runs, one 'fault' entry per attempt a fault was injected into)."""
        return self.prefix + "events"

    @property
    def finishes(self) -> str:
        """STREAM with one entry per worker that finished: the durable twin of the finished channel."""
        return self.prefix + "finishes"

    @property
    def next_id(self) -> str:
        """STRING counter from which the generator allocates task ids."""
        return self.prefix + "next_id"

    # Channels (pub/sub names are not keys, but they live under the same prefix).
    @property
    def finished_channel(self) -> str:
        """Each worker announces "<entry-id> <worker-id>" here once no more work can be had
        (the entry is its record in ``finishes``)."""
        return self.prefix + "finished"

    @property
    def progress_channel(self) -> str:
        """Terminal outcomes are announced here as "<entry-id> <status> <id> [<id> ...]", one message
        per ``events`` entry that records them (a 'done' entry lists every id one settle call finished)."""
        return self.prefix + "progress"

    # Per-task keys.
    def task(self, task_id: str) -> str:
        """HASH holding one task: kind, payload, status, attempt, result, times."""
        return f"{self.prefix}task:{task_id}"

    def task_id_of(self, task_key: str) -> str:
        """The id in a task key: the inverse of ``task()``."""
        return task_key[len(self.prefix) + len("task:") :]

    def lease(self, lease_id: str) -> str:
        """STRING (the worker id) with a TTL: the claim ``lease_id`` is alive while it exists."""
        return f"{self.prefix}lease:{lease_id}"

    def held(self, lease_id: str) -> str:
        """SET of the task ids that claim ``lease_id`` still holds (no TTL: the reaper reads it)."""
        return f"{self.prefix}held:{lease_id}"

    def package(self, package_id: str) -> str:
        """LIST of the task ids of a work package waiting to be claimed as one unit."""
        return f"{self.prefix}package:{package_id}"

    @staticmethod
    def package_entry(package_id: str) -> str:
        """How a package appears in the ready list: see package_entry()."""
        return package_entry(package_id)

    @property
    def pattern(self) -> str:
        """SCAN pattern matching every key of this queue (the queue name holds no glob characters)."""
        return self.prefix + "*"

    @property
    def task_pattern(self) -> str:
        return self.prefix + "task:*"

    def script_keys(self) -> list[str]:
        """The KEYS every wqsim Lua script receives, in the order lua/_lib.lua expects."""
        return list(self._script_keys)

    @cached_property
    def _script_keys(self) -> tuple[str, ...]:  # built once: every claim and settle sends them
        return (self.ready, self.inflight, self.delayed, self.dead, self.stats, self.signal, self.events)
