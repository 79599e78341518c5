"""What the Lua scripts answer, decoded into named results in one place.

A script replies with a flat, positional array (Lua has no records to send).
Every position is read here, and only here: the rest of wqsim sees ``Claim``,
``ReapResult``, ``Snapshot`` and ``Enqueued``, so a change to a script's reply
is a change to one decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypedDict

Reply = Any  # a raw RESP reply: nested lists of str, int or None

DrainState = Literal["ok", "missing", "lost", "stranded"]


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
    state: DrainState = "ok"


@dataclass(frozen=True)
class ReapResult:
    returned: int
    buried: int


class Enqueued(NamedTuple):
    """enqueue.lua's answer: the ids it refused as duplicates (space-separated, '' if none)
    and the ids of the work packages it made."""

    refused: str
    packages: list[str]


class Snapshot(TypedDict):
    """Queue.snapshot(): what lua/snapshot.lua read at one instant."""

    queued: list[str]  # ready list entries, work packages expanded
    running: list[str]  # held by a lease in the inflight index
    scheduled: list[str]  # delayed set
    dead: list[str]  # dead-letter list
    counters: dict[str, int]  # the stats hash
    last_event: str  # newest entry id of the events stream, '' if none
    ledger: dict[str, int]  # Keys.ledger: enqueued and retired, apart from the stats hash


_STATES: dict[int, DrainState] = {-1: "missing", -2: "lost", -3: "stranded"}
CLAIMED_WIDTH = 6  # fields per task in a claim reply: id, kind, payload, attempt, inputs, time limit


def claim(reply: Reply) -> Claim:
    """claim.lua: {drain code, next due, lease, backlog, claims in flight, task fields...}."""
    return _claim(reply, rejected=[])


def settle(reply: Reply) -> Claim:
    """settle.lua: {rejected ids, then a claim reply}."""
    return _claim(reply[1:], rejected=list(reply[0]))


def _claim(reply: Reply, rejected: list[str]) -> Claim:
    code, next_due, lease, backlog, in_flight, *flat = reply
    return Claim(
        state=_STATES.get(int(code), "ok"),
        backlog=int(backlog),
        claims_in_flight=int(in_flight),
        lease=lease or None,
        tasks=[
            Claimed(flat[i], flat[i + 1], flat[i + 2], int(flat[i + 3]), flat[i + 4], _limit(flat[i + 5]))
            for i in range(0, len(flat), CLAIMED_WIDTH)
        ],
        drained=int(code) == 1,
        next_due=float(next_due) if next_due not in ("", None) else None,
        rejected=rejected,
    )


def enqueued(reply: Reply) -> Enqueued:
    """enqueue.lua: {refused ids, package ids...}."""
    refused, *packages = reply
    return Enqueued(refused or "", list(packages))


def reaped(reply: Reply) -> ReapResult:
    """reap.lua: {returned, buried}."""
    returned, buried = reply
    return ReapResult(int(returned), int(buried))


def snapshot(reply: Reply) -> Snapshot:
    """snapshot.lua: {queued, running, scheduled, dead, stats (flat), last event id, ledger (flat)}."""
    queued, running, scheduled, dead, stats, last_event, ledger = reply
    return {
        "queued": queued,
        "running": running,
        "scheduled": scheduled,
        "dead": dead,
        "counters": _ints(stats),
        "last_event": last_event,
        "ledger": _ints(ledger),
    }


def text(reply: Reply) -> str:
    """finish.lua: the entry id it wrote."""
    return str(reply)


def ids(reply: Reply) -> list[str]:
    """heartbeat.lua (lost leases) and verify.lua (lost tasks): a plain list of ids."""
    return list(reply)


def _ints(flat: list[str]) -> dict[str, int]:
    """A flat HGETALL reply of counters as a dict."""
    return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}


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
