"""Queue names of one's own, so that people sharing one Redis never purge each other's queues.

A notebook that says ``QUEUE = "nb03-shortcomings"`` collides with every other
reader of that notebook on the same Redis: the first cell of each purges the
other's queue. ``session_queue_name("nb03-shortcomings")`` adds who is running
it and which Python process (a notebook's kernel) is running it:

    nb03-shortcomings.alice.3fa2b1

The suffix is drawn once per process, so within one kernel the name is stable:
re-running a cell, or the whole notebook, finds the same queue (and purges it),
while another kernel, or another user, gets another queue.
"""

from __future__ import annotations

import getpass
import re
import secrets

from .keys import QUEUE_NAME

__all__ = ["SESSION_SUFFIX", "USER_MAX", "session_queue_name", "session_token", "user_name"]

# A name is "<base>.<user>.<token>": the user is at most USER_MAX characters, the token six hex digits.
USER_MAX = 16
# What the session adds to a base name, as a pattern: ".<user>.<token>". nbval's sanitize file masks it.
SESSION_SUFFIX = re.compile(r"\.[A-Za-z0-9_-]{1,16}\.[0-9a-f]{6}(?![0-9a-f])")

_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]")
_token: str | None = None


def session_token() -> str:
    """Six hex digits drawn once per process (per notebook kernel), then always the same."""
    global _token
    if _token is None:
        _token = secrets.token_hex(3)
    return _token


def user_name() -> str:
    """The OS user, reduced to what a queue name allows ('.' too is replaced: it separates the parts)."""
    try:
        raw = getpass.getuser()
    except (KeyError, OSError):  # no login name and no $USER (e.g. an anonymous uid in a container)
        raw = "anon"
    cleaned = _NOT_ALLOWED.sub("_", raw)[:USER_MAX]
    return cleaned or "anon"


def session_queue_name(base: str, *, user: str | None = None, token: str | None = None) -> str:
    """``base`` made unique to this OS user and this process: ``"<base>.<user>.<token>"``.

    ``user`` defaults to the OS user, ``token`` to this process's ``session_token()``;
    both may be given (tests, or a name shared on purpose). Raises ValueError if
    ``base`` is not a valid queue name, or if the result would not be one (the rule
    is ``wqsim.keys.QUEUE_NAME``: 1-64 characters of letters, digits, '_', '.' or '-').
    """
    if not isinstance(base, str) or not QUEUE_NAME.match(base):
        raise ValueError(
            f"base must be a queue name: a letter or digit, then letters, digits, '_', '.' or '-' (got {base!r})"
        )
    user = _NOT_ALLOWED.sub("_", user)[:USER_MAX] if user is not None else user_name()
    if not user:
        raise ValueError("user must not be empty")
    token = token if token is not None else session_token()
    if not re.fullmatch(r"[0-9a-f]{6}", token):
        raise ValueError(f"token must be six lowercase hex digits (got {token!r})")
    name = f"{base}.{user}.{token}"
    if not QUEUE_NAME.match(name):
        room = 64 - (len(name) - len(base))
        raise ValueError(
            f"base {base!r} is too long: with '.{user}.{token}' the name exceeds 64 characters "
            f"(at most {room} are left for the base)"
        )
    return name
