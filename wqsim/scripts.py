"""Loads the Lua scripts in ``lua/`` and registers each once per Redis client.

Every script is ``_lib.lua`` followed by the script's own file, so the state
machine's shared steps (claim, bury, wake) are written once. Callers use the
typed wrappers in :mod:`wqsim.queue`, never the raw scripts.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any
from weakref import WeakKeyDictionary

import redis

from .keys import lua_constants

SCRIPT_NAMES = ("enqueue", "claim", "settle", "reap", "heartbeat", "snapshot", "verify", "finish")

_registered: WeakKeyDictionary[Any, dict[str, Any]] = WeakKeyDictionary()


def source(name: str) -> str:
    """The Lua text of one script, without the shared library (for notebooks to show)."""
    return resources.files("wqsim").joinpath(f"lua/{name}.lua").read_text()


@cache
def full_source(name: str) -> str:
    """The Lua text Redis runs: the spellings wqsim.keys defines, ``_lib.lua``, then the script itself."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"unknown script {name!r} (have: {', '.join(SCRIPT_NAMES)})")
    return lua_constants() + source("_lib") + "\n" + source(name)


def scripts_for(client: redis.Redis) -> dict[str, Any]:
    """The registered scripts of ``client``; registered once, called by SHA after that."""
    found = _registered.get(client)
    if found is None:
        found = {name: client.register_script(full_source(name)) for name in SCRIPT_NAMES}
        _registered[client] = found
    return found
