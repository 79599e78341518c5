"""The handler registry: task kinds a worker will run, by name.

Workers only run kinds registered here. A task names its kind as a string, so
data in Redis selects among known functions and can never smuggle in code.

Your own kinds live in your own module, registered when it is imported::

    import wqsim

    @wqsim.register("resize", timeout_s=60)
    def resize(task: wqsim.Task) -> dict[str, int]:
        ...

``wqsim work --import myapp.tasks`` (or ``WQSIM_IMPORTS=myapp.tasks``) imports
it before forking the workers, which inherit the registry (RQ, Celery's ``-A``,
arq and Huey load their tasks the same way: by importing the user's module).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, overload

from .config import check_time_limit
from .task import Task

Handler = Callable[[Task], Any]
H = TypeVar("H", bound=Handler)

IMPORTS_ENV = "WQSIM_IMPORTS"  # comma-separated modules to import, before any given by --import


class UnknownKind(LookupError):
    """A task names a kind that no handler is registered for."""


class HandlerRegistry:
    """Maps kind names to handlers. A handler takes the Task and returns JSON-able data."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._time_limits: dict[str, float] = {}

    @overload
    def register(self, kind: str, handler: H, timeout_s: float | None = None) -> H: ...

    @overload
    def register(self, kind: str, handler: None = None, timeout_s: float | None = None) -> Callable[[H], H]: ...

    def register(self, kind: str, handler: H | None = None, timeout_s: float | None = None) -> H | Callable[[H], H]:
        """Register ``handler`` for ``kind``; usable as ``@registry.register("kind")``.

        ``timeout_s``: the time limit of one attempt of this kind, overriding the
        worker's default (a task's own ``timeout_s`` overrides both).
        """
        if not kind or not isinstance(kind, str):
            raise ValueError(f"kind must be a non-empty string (got {kind!r})")
        if timeout_s is not None:
            check_time_limit(f"timeout_s of kind {kind!r}", timeout_s)

        def add(fn: H) -> H:
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
    if duration_ms > 0:  # sleep 0 returns at once, as the seed's Go time.Sleep(0) does (Python's would yield
        time.sleep(duration_ms / 1000)  # the CPU and cost the kernel's timer slack, about 0.1 ms here)
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


class ImportFailed(Exception):
    """A handler module could not be imported; the message is one line naming it and why."""


def modules_to_import(given: Iterable[str] = (), environ: Mapping[str, str] = os.environ) -> list[str]:
    """The modules named by $WQSIM_IMPORTS (comma-separated), then those ``given``, each once.

    The variable suits a container or a shell profile; flags add to it, never replace it.
    """
    names = [n.strip() for n in environ.get(IMPORTS_ENV, "").split(",")] + [n.strip() for n in given]
    return list(dict.fromkeys(n for n in names if n))


def import_modules(names: Iterable[str]) -> None:
    """Import each module, so that it registers its kinds on the default registry.

    The current directory goes first on sys.path, as ``python -m`` puts it there,
    so ``--import myapp.tasks`` finds ./myapp/tasks.py when run from the project
    (the ``wqsim`` script alone would only see installed packages). Anything the
    import raises becomes one ImportFailed line: a missing module, a typo in it,
    or an error in its own top-level code.
    """
    names = list(names)
    if names and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            why = "; ".join(str(exc).splitlines())  # one line, whatever the exception says
            raise ImportFailed(f"cannot import {name!r}: {type(exc).__name__}: {why}") from exc
