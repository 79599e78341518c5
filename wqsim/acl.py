"""Least privilege: the Redis ACL rule that lets a user run one queue and nothing else.

``rule(queue)`` is that rule: the queue's keys (``~wqsim:{queue}:*``), its
channels (``&wqsim:{queue}:*``) and exactly the commands wqsim sends, listed
in COMMANDS. A Redis user that lacks one of them does not get a traceback or
a restart loop: ``explain()`` turns the permission error, inside a Lua script
or not, into one line naming the missing command and the fix, and the command
line exits with code 2 (a worker process with CONFIG_EXIT_CODE, which the pool
never restarts). ``check()`` asks Redis up front (ACL DRYRUN, Redis >= 7), when
the user may ask.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import cache
from urllib.parse import unquote, urlsplit

import redis

from .keys import Keys, shard_name
from .scripts import SCRIPT_NAMES, full_source, source

CONFIG_EXIT_CODE = 78  # EX_CONFIG (sysexits.h): a worker process stopped for a configuration error

# Every command wqsim sends, with sample arguments for ACL DRYRUN ({key}: a key of the queue,
# {channel}: one of its channels; None: not checked, Redis lets every user run it).
# Built from the code, not from a trace: the commands the Lua scripts call (tests check this
# list against lua/*.lua), plus those in PYTHON_USES, plus the connection handshake.
# ``wqsim acl`` prints them; tests run every command of the CLI as a user with exactly this rule.
COMMANDS: dict[str, tuple[str, ...] | None] = {
    "auth": None,
    "hello": None,
    "select": ("0",),
    "ping": (),
    "blpop": ("{key}", "0"),
    "cluster|slots": (),
    "del": ("{key}",),
    "evalsha": ("0" * 40, "1", "{key}"),
    "exec": (),
    "exists": ("{key}",),
    "hdel": ("{key}", "f"),
    "hexists": ("{key}", "f"),
    "hget": ("{key}", "f"),
    "hgetall": ("{key}",),
    "hincrby": ("{key}", "f", "1"),
    "hmget": ("{key}", "f"),
    "hset": ("{key}", "f", "v"),
    "hsetnx": ("{key}", "f", "v"),
    "incrby": ("{key}", "1"),
    "llen": ("{key}",),
    "lpos": ("{key}", "e"),
    "lpush": ("{key}", "e"),
    "lrange": ("{key}", "0", "-1"),
    "multi": (),
    "pexpire": ("{key}", "1000"),
    "pttl": ("{key}",),
    "publish": ("{channel}", "m"),
    "rpop": ("{key}",),
    "rpush": ("{key}", "e"),
    "sadd": ("{key}", "m"),
    "scan": ("0",),
    "scard": ("{key}",),
    "script|load": ("return 1",),
    "set": ("{key}", "v"),
    "sismember": ("{key}", "m"),
    "smembers": ("{key}",),
    "smismember": ("{key}", "m"),
    "srem": ("{key}", "m"),
    "subscribe": ("{channel}",),
    "time": (),
    "xadd": ("{key}", "*", "f", "v"),
    "xrange": ("{key}", "-", "+"),
    "xrevrange": ("{key}", "+", "-"),
    "xtrim": ("{key}", "MAXLEN", "~", "1000"),
    "zadd": ("{key}", "1", "m"),
    "zcard": ("{key}",),
    "zrange": ("{key}", "0", "-1"),
    "zrangebyscore": ("{key}", "-inf", "+inf"),
    "zrem": ("{key}", "m"),
    "zscore": ("{key}", "m"),
}

# Commands sent from Python rather than from a script, and what sends them.
PYTHON_USES: dict[str, str] = {
    "auth": "the connection handshake (a URL with a user name)",
    "hello": "the connection handshake",
    "select": "the connection handshake (a URL naming a database other than 0)",
    "ping": "connect()",
    "cluster|slots": "connect(queue=...), asking which cluster node serves the queue",
    "blpop": "idle workers waiting for a wake-up",
    "del": "Queue.purge (generate --fresh, run) and Queue.expire_leases",
    "evalsha": "every script call",
    "script|load": "loading the scripts",
    "multi": "enqueueing in several chunks, Queue.expire_leases",
    "exec": "enqueueing in several chunks, Queue.expire_leases",
    "hdel": "enqueueing in several chunks",
    "hget": "status and workers (leases issued)",
    "hgetall": "counters",
    "hmget": "the audit",
    "incrby": "generate (task ids)",
    "llen": "status",
    "lrange": "status",
    "scan": "the audit, purge, a worker telling a lost queue from one not created yet",
    "scard": "status",
    "subscribe": "the listener",
    "xadd": "chaos fault records",
    "xrange": "the audit, the listener's catch-up",
    "xrevrange": "the listener",
    "zadd": "Queue.expire_leases (ZADD XX)",
    "sadd": "Queue.hold_open (an open-loop run's producer)",
    "srem": "Queue.release_hold (an open-loop run's producer)",
    "lpush": "Queue.release_hold (waking an idle worker)",
    "zcard": "status",
    "zrange": "status, workers",
}

LISTEN_COMMANDS = ("ping", "subscribe", "xrange", "xrevrange")  # all that `wqsim listen` needs

_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'(?:\s*,\s*'([A-Za-z]+)')?")


class PermissionDenied(Exception):
    """Redis refused a command, key or channel to this user: a configuration error (exit code 2)."""


def key_pattern(queue: str) -> str:
    return Keys(queue).pattern


def channel_pattern(queue: str) -> str:
    return Keys(queue).pattern


def rule(queue: str, shards: int = 1) -> str:
    """The ACL rule for one queue: its keys, its channels, and exactly the commands wqsim sends.

    A queue split into ``shards`` shards (see wqsim.shards): its own keys, where its layout is
    recorded, and every shard's keys and channels (each shard has a hash tag of its own).
    """
    queues = [queue] if shards == 1 else [queue, *(shard_name(queue, i) for i in range(shards))]
    return " ".join(
        [
            "resetkeys",
            *(f"~{key_pattern(q)}" for q in queues),
            "resetchannels",
            *(f"&{channel_pattern(q)}" for q in queues),
            "-@all",
            *(f"+{command}" for command in sorted(COMMANDS)),
        ]
    )


def setuser(queue: str, user: str, shards: int = 1) -> str:
    """The ACL SETUSER line for ``user``. No password: the user cannot log in until one is set."""
    if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", user):
        raise ValueError(f"user must be 1-64 characters of letters, digits, '_', '.', '@' or '-' (got {user!r})")
    return f"ACL SETUSER {user} on {rule(queue, shards)}"


def default_user(queue: str) -> str:
    return f"wqsim-{queue}"


@cache
def script_commands() -> dict[str, tuple[str, ...]]:
    """Command -> the scripts that call it, read from the Lua sources."""
    found: dict[str, set[str]] = {}
    for name in ("_lib", *SCRIPT_NAMES):
        for command in _commands_in(source(name)):
            found.setdefault(command, set()).add(f"{name}.lua")
    return {command: tuple(sorted(names)) for command, names in found.items()}


def _commands_in(text: str) -> list[str]:
    out = []
    for command, sub in _CALL.findall(text):
        command = command.lower()
        out.append(f"{command}|{sub.lower()}" if command in ("script", "config", "client") and sub else command)
    return out


def used_by(command: str) -> str:
    """What in wqsim sends ``command``, in words."""
    uses = list(script_commands().get(command, ()))
    if command in PYTHON_USES:
        uses.append(PYTHON_USES[command])
    return ", ".join(uses) or "wqsim"


@cache
def _script_by_sha() -> dict[str, str]:
    return {hashlib.sha1(full_source(name).encode()).hexdigest(): name for name in SCRIPT_NAMES}


_SCRIPT_ERROR = re.compile(
    r"The user executing the script can't "
    r"(?P<what>run this command|access at least one of the keys|publish to the channel)"
    r".*?script: (?P<sha>[0-9a-f]{40}), on @user_script:(?P<line>\d+)",
    re.S,
)
_TOP_COMMAND = re.compile(r"no permissions to run the '([^']+)' command")


def is_permission_error(exc: BaseException) -> bool:
    """Redis refused a command, key or channel to the connection's user (inside a script or not)."""
    return isinstance(exc, redis.exceptions.NoPermissionError) or (
        isinstance(exc, redis.exceptions.ResponseError) and _SCRIPT_ERROR.search(str(exc)) is not None
    )


def explain(exc: BaseException, queue: str, user: str = "default", shards: int = 1) -> str | None:
    """One line naming what ``user`` may not do and the fix; None if ``exc`` is no permission error.

    ``shards``: the queue is split into that many (the fix then names them too)."""
    if not is_permission_error(exc):
        return None
    text = str(exc)
    script = _SCRIPT_ERROR.search(text)
    if script is None:
        top = _TOP_COMMAND.search(text)
        if top:
            return _missing(user, queue, [top[1]], None, shards)
        if "channel" in text:
            return _outside(user, queue, "channels", shards)
        return _outside(user, queue, "keys", shards)
    name = _script_by_sha().get(script["sha"])
    if not script["what"].startswith("run"):
        return _outside(user, queue, "keys" if "keys" in script["what"] else "channels", shards)
    where, commands = "a wqsim script", []
    if name:
        lines, number = full_source(name).splitlines(), int(script["line"])
        in_lib = number <= len(source("_lib").splitlines())  # the library comes first (see scripts.py)
        where = f"{name}.lua" + (" through _lib.lua" if in_lib else "")
        if 0 < number <= len(lines):
            commands = list(dict.fromkeys(_commands_in(lines[number - 1])))
    return _missing(user, queue, commands, where, shards)


def _fix(queue: str, user: str, shards: int) -> str:
    return f"wqsim acl --queue {queue} --user {user}" + (f" --shards {shards}" if shards > 1 else "")


def _missing(user: str, queue: str, commands: list[str], where: str | None, shards: int = 1) -> str:
    """The line for a refused command; ``where`` is the script it ran in, if any."""
    shown = " or ".join(c.upper() for c in commands) or "a command"
    if where is None and len(commands) == 1 and commands[0] in COMMANDS:
        where = used_by(commands[0])
    needed = f" (needed by {where})" if where else ""
    if commands and not all(c in COMMANDS for c in commands):  # e.g. sent by code newer than the rule
        return (
            f"Redis user {user!r} may not run {shown}{needed}, which is not in wqsim's ACL rule either; "
            f"see: wqsim acl --queue {queue}"
        )
    return f"Redis user {user!r} may not run {shown}{needed}; add it with: {_fix(queue, user, shards)}"


def _outside(user: str, queue: str, what: str, shards: int = 1) -> str:
    where = f"wqsim:{{{queue}}}:*" + (f" and its shards' wqsim:{{{queue}:N}}:*" if shards > 1 else "")
    return (
        f"Redis user {user!r} may not use the {what} of queue {queue!r} ({where}); "
        f"grant them with: {_fix(queue, user, shards)}"
    )


def user_of(client: redis.Redis) -> str:
    """The user name a client logs in as ('default' without one)."""
    return client.connection_pool.connection_kwargs.get("username") or "default"


def user_of_url(url: str) -> str:
    """The user name a Redis URL logs in as ('default' without one)."""
    return unquote(urlsplit(url).username or "") or "default"


def needed_by(command: str) -> tuple[str, ...]:
    """The commands one CLI command needs: all of them, except for the listener."""
    return LISTEN_COMMANDS if command == "listen" else tuple(COMMANDS)


def check(client: redis.Redis, queue: str, commands: Iterable[str] | None = None) -> None:
    """Raise PermissionDenied, in one line, if the connection's user lacks any of ``commands``.

    Asks Redis with ACL DRYRUN (Redis >= 7) for each command, on a key and a
    channel of the queue. Nothing is checked when the server or the user
    cannot answer (older Redis, or ACL WHOAMI / ACL DRYRUN not granted: the
    rule wqsim prints grants neither, as DRYRUN reveals other users' rights);
    then a missing permission is reported when it is first hit.
    """
    try:
        user = client.execute_command("ACL", "WHOAMI")
    except redis.exceptions.ResponseError:
        return
    keys = Keys(queue)
    names = [c for c in (commands or COMMANDS) if COMMANDS.get(c) is not None]
    pipe = client.pipeline(transaction=False)
    for command in names:
        args = [a.format(key=keys.ready, channel=keys.progress_channel) for a in COMMANDS[command] or ()]
        pipe.execute_command("ACL", "DRYRUN", user, *command.split("|"), *args)
    replies = pipe.execute(raise_on_error=False)
    if any(isinstance(r, Exception) for r in replies):
        return  # ACL DRYRUN unknown (Redis 6) or not granted: cannot ask
    denied = [(c, r) for c, r in zip(names, replies, strict=False) if r != "OK"]
    if not denied:
        return
    commands_denied = [c for c, r in denied if "command" in r]
    if commands_denied:
        shown = ", ".join(c.upper() for c in commands_denied)
        needed = "; ".join(f"{c.upper()}: {used_by(c)}" for c in commands_denied)
        raise PermissionDenied(
            f"Redis user {user!r} may not run {shown} (needed by {needed}); "
            f"add {'it' if len(commands_denied) == 1 else 'them'} with: wqsim acl --queue {queue} --user {user}"
        )
    raise PermissionDenied(_outside(user, queue, "channels" if all("channel" in r for _, r in denied) else "keys"))


__all__ = [
    "COMMANDS",
    "CONFIG_EXIT_CODE",
    "LISTEN_COMMANDS",
    "PYTHON_USES",
    "PermissionDenied",
    "check",
    "explain",
    "is_permission_error",
    "rule",
    "setuser",
    "used_by",
]
