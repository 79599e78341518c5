"""The Task record and its mapping to and from a Redis hash.

Payloads and results are JSON, never pickle: anyone who can write to Redis
must not be able to run code in a worker through wqsim.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """Where a task is in its life. ``done``, ``dead`` and ``cancelled`` are terminal."""

    WAITING = "waiting"      # prerequisites unfinished; not in the ready list
    QUEUED = "queued"        # in the ready list
    RUNNING = "running"      # claimed under a lease, in the inflight index
    SCHEDULED = "scheduled"  # failed, waiting in the delayed set for its retry
    DONE = "done"
    DEAD = "dead"            # in the dead-letter list
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
    worker: str = ""         # who ran the latest attempt: the prefix of its lease id
    lease: str = ""          # the claim this attempt runs under; its id is the fencing token
    package: str = ""        # the work package the task was bundled into, if any
    created_at: float | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str = ""          # the last failure, if any (kept when a later attempt succeeds)
    # Graphs (the seed's "Sequential Tasks"): see wqsim.graph.
    depends_on: tuple[str, ...] = ()   # prerequisites: queued once all of them are done
    dependents: tuple[str, ...] = ()   # the tasks that name this one in depends_on
    allow_failure: bool = False        # run even if a prerequisite ends dead or cancelled
    cancelled_by: str = ""             # for a cancelled task: the failed ancestor's id
    inputs: dict[str, Any] = field(default_factory=dict)  # prerequisites' results, by id (when run)
    input_errors: dict[str, str] = field(default_factory=dict)  # failed prerequisites' errors (allow_failure)

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Task:
        """Parse a task hash; raise MalformedTask naming what is wrong."""
        task_id = fields.get("id")
        if not task_id:
            raise MalformedTask("task hash has no 'id' field")
        missing = [name for name in ("kind", "payload") if name not in fields]
        if missing:
            raise MalformedTask(f"task {task_id} is missing field(s): {', '.join(missing)}")
        payload = parse_payload(task_id, fields["payload"])
        try:
            result = json.loads(fields["result"]) if fields.get("result") else None
            return cls(
                id=task_id,
                kind=fields["kind"],
                payload=payload,
                max_attempts=int(fields.get("max_attempts", 1)),
                timeout_s=_float(fields.get("timeout_s")),
                status=Status(fields.get("status", "queued")),
                attempt=int(fields.get("attempt", 0)),
                worker=fields.get("lease", "").rsplit("#", 1)[0],
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
        except (ValueError, json.JSONDecodeError) as exc:
            raise MalformedTask(f"task {task_id} has a malformed field: {exc}") from None


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # built once: json.dumps(separators=...) builds one per call


def to_json(value: Any) -> str:
    """Compact JSON, as payloads and results are stored."""
    return _COMPACT.encode(value)


_FLAT_PAYLOADS: dict[str, dict[str, Any]] = {}
_SCALARS = (str, int, float, bool, type(None))


def parse_payload(task_id: str, raw: str | None) -> dict[str, Any]:
    """A payload field as a dict; MalformedTask (naming the task) if it is missing or not a JSON object.

    Generated tasks share a payload text; a flat one (no nested lists or
    objects) is parsed once and handed out as a fresh copy each time.
    """
    if raw is None:
        raise MalformedTask(f"task {task_id} is missing field(s): payload")
    cached = _FLAT_PAYLOADS.get(raw)
    if cached is not None:
        return dict(cached)
    try:
        payload = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise MalformedTask(f"task {task_id} has a payload that is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise MalformedTask(f"task {task_id} has a payload that is not a JSON object")
    if len(_FLAT_PAYLOADS) < 256 and all(isinstance(v, _SCALARS) for v in payload.values()):
        _FLAT_PAYLOADS[raw] = dict(payload)
    return payload


def inputs_of(flat: list[str]) -> tuple[tuple[str, ...], dict[str, Any], dict[str, str]]:
    """A graph task's prerequisites as claim.lua reports them ([id, status, value, ...]):
    (ids, results of those done, errors of those that failed)."""
    ids: list[str] = []
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for i in range(0, len(flat), 3):
        prereq, status, value = flat[i], flat[i + 1], flat[i + 2]
        ids.append(prereq)
        if status == Status.DONE.value:
            try:
                results[prereq] = json.loads(value) if value else None
            except json.JSONDecodeError as exc:
                raise MalformedTask(f"prerequisite {prereq} has a result that is not valid JSON: {exc}") from None
        else:
            errors[prereq] = value or f"prerequisite {prereq} is {status}"
    return tuple(ids), results, errors
