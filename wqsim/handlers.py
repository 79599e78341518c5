"""The handler registry: task kinds a worker will run, by name.

Workers only run kinds registered here. A task names its kind as a string, so
data in Redis selects among known functions and can never smuggle in code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from .config import check_time_limit
from .task import Task

Handler = Callable[[Task], Any]


class UnknownKind(LookupError):
    """A task names a kind that no handler is registered for."""


class HandlerRegistry:
    """Maps kind names to handlers. A handler takes the Task and returns JSON-able data."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._time_limits: dict[str, float] = {}

    def register(self, kind: str, handler: Handler | None = None, timeout_s: float | None = None) -> Any:
        """Register ``handler`` for ``kind``; usable as ``@registry.register("kind")``.

        ``timeout_s``: the time limit of one attempt of this kind, overriding the
        worker's default (a task's own ``timeout_s`` overrides both).
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"kind must be a non-empty string (got {kind!r})")
        if timeout_s is not None:
            check_time_limit(f"timeout_s of kind {kind!r}", timeout_s)

        def add(fn: Handler) -> Handler:
            self._handlers[kind] = fn
            if timeout_s is None:
                self._time_limits.pop(kind, None)
            else:
                self._time_limits[kind] = timeout_s
            return fn

        return add(handler) if handler is not None else add

    def get(self, kind: str) -> Handler:
        try:
            return self._handlers[kind]
        except KeyError:
            known = ", ".join(sorted(self._handlers)) or "none"
            raise UnknownKind(f"unknown task kind {kind!r} (registered: {known})") from None

    def time_limit(self, kind: str) -> float | None:
        """The kind's own time limit, if it was registered with one."""
        return self._time_limits.get(kind)

    def kinds(self) -> list[str]:
        return sorted(self._handlers)


def sleep(task: Task) -> dict[str, float]:
    """The seed's example task: sleep for ``duration_ms``."""
    duration_ms = task.payload.get("duration_ms", 0)
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, (int, float)) or not 0 <= duration_ms < math.inf:
        raise ValueError(
            f"sleep needs duration_ms to be a finite number of milliseconds >= 0 "
            f"(got {_shown(duration_ms)}, {_a(duration_ms)})"
        )
    time.sleep(duration_ms / 1000)
    return {"slept_ms": duration_ms}


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _a(value: object) -> str:
    """'a string', 'a list', 'null': what a JSON value is, for messages."""
    if value is None:
        return "JSON null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        if math.isnan(value):
            return "not a number"
        return "an infinite number" if math.isinf(value) else "a negative number" if value < 0 else "a number"
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), f"a {type(value).__name__}")


def noop(task: Task) -> None:
    """Does nothing: measures the queue's own overhead."""
    return None


registry = HandlerRegistry()
registry.register("sleep", sleep)
registry.register("noop", noop)
register = registry.register
