"""Teaching baselines: two work queues NOT to use, kept so a notebook can break them beside wqsim.

- The seed's naive loop (``enqueue``, ``work_naive``, ``NaivePool``): BLPOP an id,
  read the hash, run the handler, write the result. Nothing in Redis says which
  worker holds a task, so a worker killed mid-task loses it: no lease, no reaper.
- The unfenced lease queue (``claim_unfenced``, ``complete_unfenced``,
  ``reap_unfenced``, ``work_unfenced``): a claim takes a lease (a key with a TTL)
  and the reaper returns tasks whose lease expired, but completing never asks
  whether the lease still holds the task. A hung worker's late result is recorded
  after another worker completed the retried task: completed twice. wqsim's
  settle.lua makes exactly that check (fencing).

Both run wqsim's registered handlers on task hashes of the same shape (kind,
payload, attempt), and append every recorded completion to a log, so that
``outcomes`` counts done, lost and completed-twice tasks from Redis alone. Their
keys live under ``wqsim-baseline:{<name>}:``, apart from every wqsim queue.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait as mp_wait

import redis

from .connection import connect
from .handlers import HandlerRegistry, registry
from .keys import QUEUE_NAME
from .task import Task, to_json

log = logging.getLogger("wqsim.baselines")


def key(name: str, part: str) -> str:
    """Every baseline key: ``key("demo", "ready") == "wqsim-baseline:{demo}:ready"``.

    Parts: ready (LIST of waiting ids), task:<id> (HASH), done (LIST, one entry per
    recorded completion), total (STRING), and for the unfenced queue lease:<id>
    (STRING with a TTL: the holder's id) and claimed (SET of ids under a lease).
    """
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise ValueError(f"baseline name must be a valid queue name (got {name!r})")
    return f"wqsim-baseline:{{{name}}}:{part}"


def enqueue(client: redis.Redis, name: str, n: int, kind: str = "sleep", duration_ms: float = 5.0) -> list[str]:
    """Store tasks "1".."n" as hashes and LPUSH their ids, as the seed's generator does."""
    ids = [str(i) for i in range(1, n + 1)]
    payload = json.dumps({"duration_ms": duration_ms})
    pipe = client.pipeline()
    for task_id in ids:
        pipe.hset(key(name, f"task:{task_id}"), mapping={"kind": kind, "payload": payload, "status": "queued"})
    pipe.set(key(name, "total"), n)
    pipe.lpush(key(name, "ready"), *ids)
    pipe.execute()
    return ids


def purge(client: redis.Redis, name: str) -> int:
    """Delete this baseline's keys (only them: never FLUSHALL); returns how many."""
    found = list(client.scan_iter(match=key(name, "*"), count=1000))
    return int(client.delete(*found)) if found else 0


def waiting(client: redis.Redis, name: str) -> int:
    """How many ids are waiting in the ready list."""
    return int(client.llen(key(name, "ready")))


def _perform(client: redis.Redis, name: str, task_id: str, worker: str, handlers: HandlerRegistry) -> str:
    """Run the task's handler; its result as JSON. Exceptions propagate: the seed had no retries."""
    fields = client.hgetall(key(name, f"task:{task_id}"))
    task = Task(
        id=task_id,
        kind=str(fields["kind"]),
        payload=json.loads(fields["payload"]),
        attempt=int(fields.get("attempt", 1)),
        worker=worker,
    )
    return to_json(handlers.get(task.kind)(task))


def _record(client: redis.Redis, name: str, task_id: str, worker: str, result: str) -> None:
    """Write the result back and log the completion (the log is what shows a task completed twice)."""
    pipe = client.pipeline()
    pipe.hset(key(name, f"task:{task_id}"), mapping={"status": "done", "worker": worker, "result": result})
    pipe.rpush(key(name, "done"), task_id)
    pipe.execute()


# -- 1. The seed's naive loop: no lease, no reaper --------------------------------------------


def work_naive(
    client: redis.Redis, name: str, worker: str, handlers: HandlerRegistry = registry, idle_s: float = 0.2
) -> int:
    """The seed's worker: pop, run, write back, until nothing comes for ``idle_s``; returns tasks done.

    Between the BLPOP and the write-back the task exists only in this process:
    kill it there and the task is gone, with its hash saying 'running' forever.
    """
    done = 0
    while (popped := client.blpop([key(name, "ready")], timeout=idle_s)) is not None:
        task_id = str(popped[1])
        client.hset(key(name, f"task:{task_id}"), mapping={"status": "running", "worker": worker})
        _record(client, name, task_id, worker, _perform(client, name, task_id, worker, handlers))
        done += 1
    client.publish(key(name, "finished"), worker)
    return done


def _naive_main(url: str, name: str, worker: str, idle_s: float) -> None:
    work_naive(connect(url), name, worker, idle_s=idle_s)


class NaivePool:
    """Naive worker processes, each replaced when it dies (as a supervisor would), so a killer
    can be aimed at them as at a ``WorkerPool``: ``pids()`` and ``kill()``. A worker that
    exits cleanly (nothing left to pop) is not replaced."""

    def __init__(self, url: str, name: str, ids: Sequence[str], idle_s: float = 0.2) -> None:
        self.url, self.name, self.ids, self.idle_s = url, name, [str(i) for i in ids], idle_s
        self.restarts = 0
        self._ctx = mp.get_context("fork")  # handlers registered in the parent carry over
        self._live: dict[str, mp.process.BaseProcess] = {}
        self._lock = threading.Lock()  # guards _live: a pid is never killed after it was reaped
        self._slots: list[threading.Thread] = []

    def start(self) -> NaivePool:
        for worker in self.ids:
            slot = threading.Thread(target=self._run_slot, args=(worker,), name=f"naive-{worker}", daemon=True)
            slot.start()
            self._slots.append(slot)
        return self

    def _run_slot(self, worker: str) -> None:
        while True:
            with self._lock:
                proc = self._ctx.Process(target=_naive_main, args=(self.url, self.name, worker, self.idle_s))
                proc.start()
                self._live[worker] = proc
            mp_wait([proc.sentinel])
            with self._lock:
                proc.join()
                del self._live[worker]
                if proc.exitcode == 0:
                    return
                self.restarts += 1
            log.info("Naive worker %s died (exit code %s); starting a replacement", worker, proc.exitcode)

    def pids(self) -> dict[str, int]:
        with self._lock:
            return {w: p.pid for w, p in self._live.items() if p.pid is not None and p.exitcode is None}

    def kill(self, worker: str, sig: int = signal.SIGKILL) -> int | None:
        """Send ``sig`` to one worker process; its pid, or None if it is not running."""
        with self._lock:
            proc = self._live.get(worker)
            if proc is None or proc.pid is None or proc.exitcode is not None:
                return None
            os.kill(proc.pid, sig)
            return proc.pid

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until every worker has exited cleanly; True if they did within ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for slot in self._slots:
            slot.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(slot.is_alive() for slot in self._slots)


# -- 2. Leases and a reaper, but no fencing ---------------------------------------------------

_CLAIM = """
local id = redis.call('RPOP', KEYS[1])
if not id then return false end
redis.call('SET', ARGV[3] .. 'lease:' .. id, ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], id)
redis.call('HSET', ARGV[3] .. 'task:' .. id, 'status', 'running', 'worker', ARGV[1])
redis.call('HINCRBY', ARGV[3] .. 'task:' .. id, 'attempt', 1)
return id
"""  # KEYS: ready, claimed; ARGV: worker, lease ms, key prefix. Returns the id claimed, or nil.

_REAP = """
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('EXISTS', ARGV[1] .. 'lease:' .. id) == 0 then
    redis.call('SREM', KEYS[2], id)
    redis.call('RPUSH', KEYS[1], id)
    redis.call('HSET', ARGV[1] .. 'task:' .. id, 'status', 'queued')
    n = n + 1
  end
end
return n
"""  # KEYS: ready, claimed; ARGV: key prefix. Returns how many tasks went back to the ready list.


def claim_unfenced(client: redis.Redis, name: str, worker: str, lease_ms: int) -> str | None:
    """Pop a task and lease it to ``worker`` for ``lease_ms``, in one script; its id, or None."""
    found = client.eval(_CLAIM, 2, key(name, "ready"), key(name, "claimed"), worker, lease_ms, key(name, ""))
    return str(found) if found is not None else None


def complete_unfenced(client: redis.Redis, name: str, task_id: str, worker: str, result: str) -> None:
    """Record the result. THE BUG: it never checks that ``worker``'s lease still holds the task."""
    _record(client, name, task_id, worker, result)
    client.srem(key(name, "claimed"), task_id)
    client.delete(key(name, f"lease:{task_id}"))  # whoever holds it now: another worker's lease, even


def reap_unfenced(client: redis.Redis, name: str) -> int:
    """Return the tasks whose lease expired to the ready list; how many."""
    return int(client.eval(_REAP, 2, key(name, "ready"), key(name, "claimed"), key(name, "")))


def work_unfenced(
    client: redis.Redis,
    name: str,
    worker: str,
    handlers: HandlerRegistry = registry,
    lease_ms: int = 200,
    poll_s: float = 0.01,
) -> int:
    """Claim, run, complete; reap when idle; exit once nothing is waiting or leased. Tasks done.

    No heartbeat: a task that runs past ``lease_ms`` is reaped and run again.
    """
    done = 0
    while True:
        task_id = claim_unfenced(client, name, worker, lease_ms)
        if task_id is None:
            if reap_unfenced(client, name) == 0 and client.scard(key(name, "claimed")) == 0:
                return done
            time.sleep(poll_s)  # a lease still runs: wait for it to end or expire
            continue
        complete_unfenced(client, name, task_id, worker, _perform(client, name, task_id, worker, handlers))
        done += 1


# -- Counting -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcomes:
    """What became of a baseline run's tasks, read from Redis. ``lost``: neither done, nor
    waiting, nor under a lease; read it once the workers have stopped, since a task a naive
    worker is running looks in Redis exactly like one whose worker died (that is the point)."""

    total: int
    done: int
    waiting: int
    leased: int
    lost: int
    completed_twice: int

    def summary(self) -> str:
        return f"{self.done} of {self.total} done, {self.lost} lost, {self.completed_twice} completed twice"


def outcomes(client: redis.Redis, name: str) -> Outcomes:
    """Count a baseline run's outcomes from its ready list, lease set and completion log."""
    total = int(client.get(key(name, "total")) or 0)
    completions = Counter(client.lrange(key(name, "done"), 0, -1))
    ready = set(client.lrange(key(name, "ready"), 0, -1))
    leased = set(client.smembers(key(name, "claimed")))
    accounted = completions.keys() | ready | leased
    lost = sum(1 for i in range(1, total + 1) if str(i) not in accounted)
    return Outcomes(
        total=total,
        done=len(completions),
        waiting=len(ready),
        leased=len(leased),
        lost=lost,
        completed_twice=sum(1 for count in completions.values() if count > 1),
    )
