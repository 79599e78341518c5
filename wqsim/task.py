"""The Task record and its mapping to and from a Redis hash.

Payloads and results are JSON, never pickle: anyone who can write to Redis
must not be able to run code in a worker through wqsim.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from . import decoding
from .config import MAX_DEPENDENCIES_HANDED_OVER, Limits
from .keys import worker_of

DEFAULT_LIMITS = Limits()


class Status(enum.StrEnum):
    """Where a task is in its life. ``done``, ``dead`` and ``cancelled`` are terminal."""

    WAITING = "waiting"  # prerequisites unfinished; not in the ready list
    QUEUED = "queued"  # in the ready list
    RUNNING = "running"  # claimed under a lease, in the inflight index
    SCHEDULED = "scheduled"  # failed, waiting in the delayed set for its retry
    DONE = "done"
    DEAD = "dead"  # in the dead-letter list
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.DONE, Status.DEAD, Status.CANCELLED)


class MalformedTask(ValueError):
    """A task hash that cannot be turned into a Task (missing field, bad JSON)."""


@dataclass(slots=True)
class Task:
    """One unit of work. ``payload`` is what the handler for ``kind`` receives.

    A snapshot read from Redis: changing it changes nothing there. (Not frozen:
    a frozen dataclass takes four times as long to build, once per task.)
    """

    id: str
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)
    max_attempts: int = 3
    timeout_s: float | None = None  # time limit of one attempt; None: the kind's or the worker's limit
    status: Status = Status.QUEUED
    attempt: int = 0
    worker: str = ""  # who ran the latest attempt: the prefix of its lease id
    lease: str = ""  # the claim this attempt runs under; its id is the fencing token
    package: str = ""  # the work package the task was bundled into, if any
    created_at: float | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str = ""  # the last failure, if any (kept when a later attempt succeeds)
    # Graphs (the seed's "Sequential Tasks"): see wqsim.graph.
    depends_on: tuple[str, ...] = ()  # prerequisites: queued once all of them are done
    dependents: tuple[str, ...] = ()  # the tasks that name this one in depends_on
    allow_failure: bool = False  # run even if a prerequisite ends dead or cancelled
    cancelled_by: str = ""  # for a cancelled task: the failed ancestor's id
    inputs: dict[str, Any] = field(default_factory=dict)  # prerequisites' results, by id (when run)
    input_errors: dict[str, str] = field(default_factory=dict)  # failed prerequisites' errors (allow_failure)

    @classmethod
    def from_hash(cls, fields: dict[str, str], limits: Limits = DEFAULT_LIMITS) -> Task:
        """Parse a task hash; raise MalformedTask naming what is wrong (or the limit it breaks)."""
        task_id = fields.get("id")
        if not task_id:
            raise MalformedTask("task hash has no 'id' field")
        missing = [name for name in ("kind", "payload") if name not in fields]
        if missing:
            raise MalformedTask(f"task {task_id} is missing field(s): {', '.join(missing)}")
        payload = parse_payload(task_id, fields["payload"], limits)
        result = _decode(f"task {task_id}: result", fields["result"], limits) if fields.get("result") else None
        try:
            return cls(
                id=task_id,
                kind=fields["kind"],
                payload=payload,
                max_attempts=int(fields.get("max_attempts", 1)),
                timeout_s=_float(fields.get("timeout_s")),
                status=Status(fields.get("status", "queued")),
                attempt=int(fields.get("attempt", 0)),
                worker=worker_of(fields.get("lease", "")),
                lease=fields.get("lease", ""),
                package=fields.get("package", ""),
                created_at=_float(fields.get("created_at")),
                enqueued_at=_float(fields.get("enqueued_at")),
                started_at=_float(fields.get("started_at")),
                finished_at=_float(fields.get("finished_at")),
                result=result,
                error=fields.get("error", ""),
                depends_on=tuple(fields.get("prereqs", "").split()),
                dependents=tuple(fields.get("dependents", "").split()),
                allow_failure=fields.get("allow_failure") == "1",
                cancelled_by=fields.get("cancelled_by", ""),
            )
        except (ValueError, OverflowError) as exc:
            raise MalformedTask(f"task {task_id} has a malformed field: {str(exc)[:200]}") from None


def _decode(what: str, raw: str, limits: Limits) -> Any:
    """JSON read from Redis, within ``limits`` (see wqsim.decoding); MalformedTask otherwise."""
    try:
        return decoding.loads(what, raw, limits)
    except (decoding.BadText, decoding.OverLimit) as exc:
        raise MalformedTask(str(exc)) from None


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(separators=...) builds one per call


def to_json(value: Any) -> str:
    """Compact JSON, as payloads and results are stored."""
    return _COMPACT.encode(value)


_FLAT_PAYLOADS: dict[str, tuple[Limits, dict[str, Any]]] = {}
_SCALARS = (str, int, float, bool, type(None))


def parse_payload(task_id: str, raw: str | None, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A payload field as a dict; MalformedTask (naming the task, or the limit it breaks)
    if it is missing, over ``limits``, or not a JSON object.

    Generated tasks share a payload text; a flat one (no nested lists or
    objects) is parsed once (per Limits) and handed out as a fresh copy each time.
    """
    if raw is None:
        raise MalformedTask(f"task {task_id} is missing field(s): payload")
    cached = _FLAT_PAYLOADS.get(raw)
    if cached is not None and (cached[0] is limits or cached[0] == limits):
        return dict(cached[1])
    payload = _decode(f"task {task_id}: payload", raw, limits)
    if not isinstance(payload, dict):
        raise MalformedTask(f"task {task_id}: payload is not a JSON object")
    if len(_FLAT_PAYLOADS) < 256 and all(isinstance(v, _SCALARS) for v in payload.values()):
        _FLAT_PAYLOADS[raw] = (limits, dict(payload))
    return payload


def inputs_of(
    flat: list[str],
    limits: Limits = DEFAULT_LIMITS,
    task_id: str = "?",
) -> tuple[tuple[str, ...], dict[str, Any], dict[str, str]]:
    """A graph task's prerequisites as claim.lua reports them ([id, status, value, ...]):
    (ids, results of those done, errors of those that failed). Each result is
    decoded within ``limits``, and there may be at most ``limits.max_dependencies``."""
    count = len(flat) // 3
    if count > limits.max_dependencies:
        more = "more than " if count > MAX_DEPENDENCIES_HANDED_OVER else ""
        raise MalformedTask(
            f"task {task_id}: has {more}{count:,} prerequisites, over the limit of "
            f"{limits.max_dependencies:,} (Limits.max_dependencies)"
        )
    ids: list[str] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for i in range(0, len(flat), 3):
        prereq, status, value = flat[i], flat[i + 1], flat[i + 2]
        ids.append(prereq)
        if status == Status.DONE.value:
            results[prereq] = (
                _decode(f"task {task_id}: the result of prerequisite {prereq!r}", value, limits) if value else None
            )
        else:
            try:
                decoding.check_utf8(f"task {task_id}: the error of prerequisite {prereq!r}", value)
                decoding.check_size(f"task {task_id}: the error of prerequisite {prereq!r}", value, limits)
            except (decoding.BadText, decoding.OverLimit) as exc:
                raise MalformedTask(str(exc)) from None
            errors[prereq] = value or f"prerequisite {prereq} is {status}"
    return tuple(ids), results, errors
