"""Retention: a queue keeps the newest done tasks and a bounded event stream, never a result still needed.

Policies are small here (keep 3, keep 0) so that a handful of tasks shows what
10,000 would. Settles are driven one task at a time where the order matters,
so each done task has its own moment in the done index.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from wqsim import Queue, Settlement, Task, audit, generate
from wqsim.queue import TaskNotFound, TaskRetired
from wqsim.retention import DEFAULT_EVENTS_MAXLEN, DEFAULT_KEEP_DONE, Retention
from wqsim.scripts import source


def settle_next(q: Queue, outcome: str = "done", result: str = "null") -> str:
    """Claim the next ready task and record ``outcome`` for it, in a settle call of its own."""
    claim = q.claim("w", lease_ms=60_000)
    task = claim.tasks[0]
    q.settle("w", [Settlement(task.id, claim.lease, outcome, result, 1.0, 2.0)], lease_ms=60_000)  # type: ignore[arg-type]
    return task.id


def kept(q: Queue) -> set[str]:
    return {q.keys.task_id_of(key) for key, _ in q.iter_task_hashes(("status",))}


def t(task_id: str, *depends_on: str) -> Task:
    return Task(id=task_id, kind="noop", depends_on=depends_on)


def test_with_keep_done_n_only_the_newest_n_done_tasks_keep_their_hashes(make_queue):
    q = make_queue()
    q.set_retention(Retention(keep_done=3))
    generate(q, 8)
    assert [settle_next(q) for _ in range(8)] == [str(i) for i in range(1, 9)]
    assert kept(q) == {"6", "7", "8"}
    assert q.client.zrange(q.keys.done_index, 0, -1) == ["6", "7", "8"]
    c = q.counters()
    assert (c["total"], c["done"], c["retired"]) == (8, 8, 5)  # the counters keep their totals
    a = audit(q)
    assert a.clean and (a.generated, a.done, a.retired, a.lost, a.executions) == (8, 8, 5, 0, 8)


def test_a_retired_task_reads_as_retired_and_an_unknown_one_as_not_found(make_queue):
    q = make_queue()
    with pytest.raises(TaskNotFound, match="has no task '1'") as info:
        q.task("1")
    assert not isinstance(info.value, TaskRetired)
    q.set_retention(Retention(keep_done=1))
    generate(q, 2)
    settle_next(q), settle_next(q)
    with pytest.raises(TaskRetired, match=r"task '1' .* 1 done task\(s\) were retired by the retention policy"):
        q.task("1")
    assert q.task("2").result is None and q.task("2").status.value == "done"


def test_keep_done_zero_keeps_a_prerequisite_until_every_dependent_has_ended(make_queue):
    q = make_queue()
    q.set_retention(Retention(keep_done=0))
    q.enqueue([t("x"), t("a"), t("b", "a"), t("c", "b")])  # x alone; a -> b -> c
    assert settle_next(q) == "x"
    assert kept(q) == {"a", "b", "c"}  # x had no dependent: retired at once
    assert settle_next(q, result='{"from": "a"}') == "a"
    assert "a" in kept(q)  # b is queued and will read a's result when it is claimed
    claim = q.claim("w", lease_ms=60_000)
    assert [c.id for c in claim.tasks] == ["b"] and list(claim.tasks[0].inputs) == ["a", "done", '{"from": "a"}']
    q.settle("w", [Settlement("b", claim.lease, "done", "null", 1.0, 2.0)], lease_ms=60_000)
    assert kept(q) == {"b", "c"}  # a's dependent has ended; b's has not
    assert settle_next(q) == "c"
    assert kept(q) == set()
    a = audit(q)
    assert a.clean and (a.done, a.retired) == (4, 4)


def test_done_tasks_older_than_keep_done_s_are_retired_as_later_ones_are_recorded(make_queue):
    q = make_queue()
    q.set_retention(Retention(keep_done=None, keep_done_s=0))
    generate(q, 3)
    settle_next(q)
    assert kept(q) == {"1", "2", "3"}  # nothing is older than the task just recorded
    settle_next(q)
    assert kept(q) == {"2", "3"}
    assert audit(q).retired == 1


@pytest.mark.real_redis
def test_the_events_stream_stays_within_its_approximate_maxlen(real_client, queue_name):
    q = Queue(real_client, queue_name)
    q.set_retention(Retention(keep_done=None, events_maxlen=50))
    generate(q, 400, kind="noop")
    for _ in range(400):
        settle_next(q, "dead")  # one event per task; dead tasks are never retired
    assert 50 <= real_client.xlen(q.keys.events) <= 50 + 100  # MAXLEN ~ trims whole nodes of 100 entries
    a = audit(q)
    assert (a.dead, a.lost, a.in_flight) == (400, 0, 0)
    q.purge()


@pytest.mark.real_redis
def test_events_older_than_the_oldest_done_task_kept_are_trimmed_with_it(real_client, queue_name):
    q = Queue(real_client, queue_name)
    q.set_retention(Retention(keep_done=5, events_maxlen=None))
    generate(q, 400, kind="noop")
    for _ in range(400):
        settle_next(q)  # one 'done' entry per settle call
    # Trimmed once per 100 tasks retired, to whole stream nodes of 100 entries.
    assert real_client.xlen(q.keys.events) <= 5 + 100 + 100
    assert audit(q).clean
    q.purge()


def test_the_audit_stays_clean_after_a_worker_run_under_retention(make_queue, make_worker):
    q = make_queue()
    q.set_retention(Retention(keep_done=5))
    generate(q, 60, duration_ms=0)
    make_worker(batch_size=4).run()
    a = audit(q)
    assert a.clean, a.summary()
    assert (a.generated, a.done, a.lost, a.completed_twice, a.executions) == (60, 60, 0, 0, 60)
    assert a.retired + len(kept(q)) == 60 and len(kept(q)) <= 5 + 4  # a settle retires down to 5 again
    from wqsim import metrics

    assert len(metrics.attempts(q)) == len(kept(q))  # metrics read what is kept


def test_a_kept_done_task_whose_hash_vanishes_is_still_reported_lost_by_id(make_queue):
    q = make_queue()
    q.set_retention(Retention(keep_done=2))
    generate(q, 5)
    for _ in range(5):
        settle_next(q)
    q.client.delete(q.keys.task("5"))  # in the done index, so not retired: lost
    a = audit(q)
    assert (a.lost, a.lost_ids, a.retired) == (1, ("5",), 3)


def test_the_lua_defaults_mirror_retentions_defaults():
    defaults = re.search(r"RETENTION_DEFAULTS = \{(.*?)\}", source("_lib")).group(1)
    assert f"keep_done = {DEFAULT_KEEP_DONE}," in defaults and f"events_maxlen = {DEFAULT_EVENTS_MAXLEN}" in defaults
    assert "keep_done_s = false" in defaults and Retention().keep_done_s is None


def test_a_queue_without_a_policy_applies_the_defaults_and_a_stored_one_reads_back(make_queue):
    q = make_queue()
    assert q.retention() == Retention() == Retention(keep_done=10_000, keep_done_s=None, events_maxlen=100_000)
    policy = Retention(keep_done=0, keep_done_s=1.5, events_maxlen=None)
    q.set_retention(policy)
    assert q.retention() == policy


@pytest.mark.parametrize(
    "bad",
    [
        dict(keep_done=-1),
        dict(events_maxlen=1.5),
        dict(keep_done_s=float("nan")),
        dict(keep_done_s=-1),
        dict(keep_done=True),
    ],
)
def test_bad_retention_values_are_refused_naming_the_field(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Retention(**bad)


def test_wqsim_generate_sets_the_queues_retention_policy(redis_url, queue_name, real_client):
    def generate_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "wqsim",
                "generate",
                "--redis-url",
                redis_url,
                "--queue",
                queue_name,
                "--tasks",
                "2",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = generate_cli("--keep-done", "3", "--events-maxlen", "all")
    assert done.returncode == 0, done.stderr
    assert Queue(real_client, queue_name).retention() == Retention(keep_done=3, events_maxlen=None)
    refused = generate_cli("--keep-done", "-1")
    assert refused.returncode == 2 and "expected an integer >= 0 or 'all'" in refused.stderr
