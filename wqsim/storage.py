"""Storage faults: a Redis that may drop wqsim's keys is refused, and keys that vanish are reported.

A work queue keeps its users' data in Redis, so losing keys must never go
unnoticed. Two ways Redis loses them:

- Eviction. Under any ``maxmemory-policy`` but ``noeviction`` Redis deletes keys
  when memory runs short: task hashes, the ready list, the stats hash. The
  ``volatile-*`` policies evict only keys with a TTL, and every lease key has
  one, so they are refused too. ``check_eviction_policy`` runs when ``generate``,
  ``work`` and ``run`` start, and refuses such a server with one line naming the
  fix, unless the caller accepts the risk explicitly (``--allow-eviction``,
  ``RunConfig.allow_eviction``); then evictions are still reported (below).
- A restart without persistence: every key is gone at once.

How the loss is seen (see also the audit's docstring):
- Every enqueue writes the sentinel field 'created' = 1 in the stats hash and
  counts its tasks in a second key, the ledger (Keys.ledger). A stats hash
  without the sentinel was recreated by a counter increment after it was lost;
  a missing stats hash beside a ledger was lost. Claim replies say so
  (``Claim.state``, from the idle path's existing read: no extra round trip),
  and such a queue is never reported drained.
- A worker that finds its queue lost, or missing after it had seen it, or its
  unfinished tasks in no structure at all (a list was evicted), logs it once
  and stops instead of waiting forever (a worker process exits 72 and is not
  replaced; ``wqsim work`` exits 1). Ids claimed without a hash are
  dead-lettered and counted ('vanished'), and ``wqsim work`` exits 1 for them too.
- When the whole server restarted empty, nothing in Redis remembers: the
  process that enqueued knows how many tasks it made, and the audit takes that
  count (``audit(queue, expected=N)``, ``wqsim status --expected N``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import redis

log = logging.getLogger("wqsim.storage")

SAFE_POLICY = "noeviction"
FIX = f"CONFIG SET maxmemory-policy {SAFE_POLICY}"


class EvictionRisk(ValueError):
    """Redis may evict keys (maxmemory-policy is not noeviction): a configuration error."""


def eviction_policy(client: redis.Redis) -> str | None:
    """The server's ``maxmemory-policy``: from CONFIG GET, else (CONFIG denied to an ACL
    user, or not implemented, as in fakeredis) from INFO memory; None if neither answers."""
    try:
        value = client.config_get("maxmemory-policy").get("maxmemory-policy")
        if value:
            return str(value)
    except redis.ResponseError:  # NOPERM, unknown command
        pass
    try:
        value = client.info("memory").get("maxmemory_policy")
        return str(value) if value else None
    except redis.ResponseError:
        return None


def check_eviction_policy(
    client: redis.Redis,
    where: str = "Redis",
    allow_eviction: bool = False,
    logger: logging.Logger | None = None,
) -> str | None:
    """Refuse a server that may evict keys, unless ``allow_eviction``; return its policy.

    Raises EvictionRisk (one line, naming the fix). With ``allow_eviction`` the
    risk is logged as a warning instead; a policy that cannot be read is logged
    and accepted (the audit and the workers still report keys that vanish).
    """
    logger = logger or log
    policy = eviction_policy(client)
    if policy is None:
        logger.warning(
            "Cannot read maxmemory-policy of %s (CONFIG GET and INFO denied or unsupported); "
            "if it evicts keys, tasks can be lost (it must be %s)",
            where,
            SAFE_POLICY,
        )
        return None
    if policy == SAFE_POLICY:
        return policy
    if allow_eviction:
        logger.warning(
            "%s has maxmemory-policy %s: it may evict wqsim's keys; losses will be reported, "
            "not prevented (allowed by --allow-eviction)",
            where,
            policy,
        )
        return policy
    raise EvictionRisk(
        f"{where} has maxmemory-policy {policy}, so it may evict wqsim's keys and lose tasks; "
        f"run '{FIX}' (and set it in redis.conf), or pass --allow-eviction to accept the risk"
    )


def check_each_server(
    clients: Iterable[redis.Redis],
    where: str = "Redis",
    allow_eviction: bool = False,
    logger: logging.Logger | None = None,
) -> None:
    """check_eviction_policy once for each server among ``clients``: a sharded queue's shards
    share servers (all of them on a single one), and one server is checked, and warned of, once."""
    seen: set[tuple[object, ...]] = set()
    for client in clients:
        kwargs = client.connection_pool.connection_kwargs
        server = (kwargs.get("host"), kwargs.get("port"), kwargs.get("path"))
        if server not in seen:
            seen.add(server)
            check_eviction_policy(client, where, allow_eviction, logger)


def vanished_message(queue: str, lost: int, how: str, exact: bool = True) -> str:
    """The one line a worker logs when it finds its queue gone. Not ``exact``: nothing in
    Redis remembers how many tasks there were, and ``lost`` is what the worker saw."""
    if exact:
        count = f"{lost} task(s) lost"
    elif lost:
        count = f"at least {lost} task(s) lost"
    else:  # lost before this worker saw any: nothing says how many (wqsim status --expected N counts them)
        count = "task(s) lost, how many is unknown"
    return f"queue {queue!r} vanished from Redis ({how}): {count}; stopping"
