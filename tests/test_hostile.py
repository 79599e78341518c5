"""Hostile data: whatever anyone with write access puts in a task hash, the worker dead-letters
that task with a reason (or runs it, if it is valid), never dies, and the audit stays clean."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from helpers import done_count, running
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wqsim import HandlerRegistry, Queue, Status, Task, Worker, WorkerConfig, WorkerPool, audit, connect
from wqsim.config import Limits
from wqsim.keys import ID
from wqsim.task import MalformedTask, inputs_of, parse_payload

LIMITS = Limits()
FIELDS = ("kind", "payload", "max_attempts", "attempt", "timeout_s", "prereqs", "dependents", "result", "error")


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# Payloads that broke (or could break) decoding, then anything at all.
NASTY = [
    b'{"n": ' + b"9" * 5001 + b"}",  # Python's 4300-digit int limit
    b'{"n": -' + b"1" * 1001 + b"}",  # over Limits.max_int_digits
    b"[" * 100_000,  # RecursionError in json.loads
    nested(LIMITS.max_depth + 1),
    nested(LIMITS.max_depth),  # exactly at the limit: valid
    b'{"s": "\xff\xfe"}',  # not UTF-8
    b'{"s": "' + b"a" * (LIMITS.max_payload_bytes + 1) + b'"}',
    b'{"s": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}',  # brackets in a string
    b'"\\' + b'"\\' * 50 + b"[" * 70,  # an unterminated string before brackets
    b"[]",
    b"null",
    b"",
    b"{",
    b'{"duration_ms": "5"}',
    b'{"a": NaN}',
    b'{"a": 1e999999}',
]
payloads = st.one_of(
    st.sampled_from(NASTY),
    st.binary(max_size=64),
    st.recursive(
        st.integers() | st.text(max_size=8) | st.none(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
        max_leaves=8,
    ).map(lambda v: json.dumps({"v": v}).encode()),
)
values = st.one_of(st.binary(max_size=16), st.sampled_from([b"", b"1", b"3", b"-1", b"nan", b"inf", b"1e400", b"x y"]))
kinds = st.sampled_from([b"noop", b"flaky", b"echo", b"sleep", b"nope", b"", b"\xff", b"os.system"]) | st.binary(
    max_size=8
)
ids = st.one_of(
    st.from_regex(ID, fullmatch=True).filter(lambda s: not s.startswith("pkg")),
    st.sampled_from(["x x", "a:b", "t#1", "t@p", "pkg:", "pkg:a b", "a\nb", "*", "é", "a" * 129]),
    st.text(min_size=1, max_size=12).filter(lambda s: not s.startswith("pkg:")),
)


@st.composite
def task_hashes(draw: st.DrawFn) -> tuple[str, dict[str, bytes]]:
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS)))
    if draw(st.booleans()) or "kind" in fields:
        fields["kind"] = draw(kinds)
    if draw(st.integers(0, 9)) > 0:
        fields["payload"] = draw(payloads)
    return draw(ids), fields


def fuzz_registry(handled: list[tuple[str, object]]) -> HandlerRegistry:
    """Handlers that record what reached them: only tasks that decoded within the limits."""
    reg = HandlerRegistry()

    def record(task: Task) -> object:
        assert isinstance(task.payload, dict) and len(task.inputs) <= LIMITS.max_dependencies
        handled.append((task.id, task.payload))
        return {"keys": len(task.payload)}

    def flaky(task: Task) -> object:
        if task.attempt == 1:
            raise RuntimeError("first attempts fail")
        return record(task)

    reg.register("noop", record)
    reg.register("echo", lambda task: record(task) and task.payload)
    reg.register("flaky", flaky)
    reg.register("sleep", lambda task: record(task) and None)  # never really sleeps: a fuzzed duration could be days
    return reg


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A client that writes and reads bytes, as anyone with write access could."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def write_by_hand(raw: redis.Redis, q: Queue, tasks: list[tuple[str, dict[str, bytes]]]) -> None:
    for task_id, fields in tasks:
        if fields:
            raw.hset(q.keys.task(task_id), mapping=fields)
        raw.lpush(q.keys.ready, task_id.encode("utf-8", "surrogatepass"))


# 200 lists of hostile task hashes a run by default (the suite shares two cores with itself);
# WQSIM_FUZZ_EXAMPLES=2000 for a longer search.
FUZZ_EXAMPLES = int(os.environ.get("WQSIM_FUZZ_EXAMPLES", "200"))


@pytest.mark.slow
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tasks=st.lists(task_hashes(), min_size=1, max_size=6, unique_by=lambda t: t[0]), batch_size=st.integers(1, 4))
def test_any_task_hash_ends_done_or_dead_with_a_reason_and_the_worker_lives_on(redis_url, raw, tasks, batch_size):
    # A client per example: each Worker's private connection keeps a slot of its client's pool
    # (redis-py counts connections made with make_connection() until the pool is closed).
    real_client = connect(redis_url)
    q = Queue(real_client, "fuzz-" + uuid.uuid4().hex[:10])
    try:
        write_by_hand(raw, q, tasks)
        q.enqueue([Task("good", "noop", {"ok": 1})])  # claimed last (FIFO): total > 0 until the end
        handled: list[tuple[str, object]] = []
        config = WorkerConfig(idle_wait_s=0.02, backoff_s=0.001, backoff_max_s=0.002, batch_size=batch_size)
        stats = Worker(real_client, q.name, "fuzzer", config, registry=fuzz_registry(handled)).run()  # never raises

        assert ("good", {"ok": 1}) in handled
        for task_id, _ in tasks + [("good", {})]:
            fields = {
                k.decode(): v.decode(errors="surrogateescape") for k, v in raw.hgetall(q.keys.task(task_id)).items()
            }
            assert fields.get("status") in ("done", "dead"), (task_id, fields)
            if fields["status"] == "dead":
                assert fields.get("error"), (task_id, fields)
            else:
                assert ID.match(task_id) and task_id in {h[0] for h in handled}
        assert not any(ID.match(task_id) is None for task_id, _ in handled)  # no bad id reached a handler
        a = audit(q)
        assert (a.lost, a.completed_twice, a.in_flight) == (0, 0, 0), a
        assert stats.done + stats.dead >= 1
    finally:
        q.purge()
        q.close()  # the enqueue's connection
        real_client.close()


def test_the_issues_payloads_are_dead_lettered_naming_the_limit_in_a_worker_process(redis_url, raw, queue_name):
    """The worker process never dies: no restart, and it keeps its other claims (prefetched and batched)."""
    client = connect(redis_url)
    q = Queue(client, queue_name)
    write_by_hand(
        raw,
        q,
        [
            ("big-int", {"kind": b"noop", "payload": b'{"n": ' + b"9" * 5001 + b"}", "max_attempts": b"1"}),
            ("deep", {"kind": b"noop", "payload": b"[" * 100_000, "max_attempts": b"1"}),
            ("huge", {"kind": b"noop", "payload": b'{"s":"' + b"a" * 2_000_000 + b'"}'}),
            ("bytes", {"kind": b"noop", "payload": b'{"s":"\xff"}'}),
            ("x x", {"kind": b"noop", "payload": b"{}"}),
            ("bad-result", {"kind": b"noop", "payload": b"{}", "prereqs": b"deep-result"}),
            ("deep-result", {"kind": b"noop", "payload": b"{}", "status": b"done", "result": b"[" * 5000}),
        ],
    )
    q.enqueue([Task(str(i), "noop", {}) for i in range(20)])
    pool = WorkerPool(redis_url, queue_name, ["p1"], WorkerConfig(idle_wait_s=0.05, batch_size=3), mode="process")
    with running(pool):
        assert pool.join(60)
    assert pool.restarts == 0 and pool.exit_codes() == {"p1": 0}
    errors = {
        t: client.hget(q.keys.task(t), "error") for t in ("big-int", "deep", "huge", "bytes", "x x", "bad-result")
    }
    assert errors == {
        "big-int": "task big-int: payload holds an integer of 5,001 digits, "
        "over the limit of 1,000 (Limits.max_int_digits)",
        "deep": "task deep: payload nests deeper than the limit of 64 (Limits.max_depth)",
        "huge": "task huge: payload is 2,000,008 bytes, over the limit of 1,048,576 (Limits.max_payload_bytes)",
        "bytes": "task bytes: payload is not valid UTF-8 text (byte 6)",
        "x x": "refused: a task id must be 1-128 letters, digits, '_', '.' or '-' (this one was pushed by hand)",
        "bad-result": "task bad-result: the result of prerequisite 'deep-result' nests deeper than the limit of 64 "
        "(Limits.max_depth)",
    }
    assert all(client.hget(q.keys.task(str(i)), "status") == "done" for i in range(20))
    a = audit(q)
    assert (a.lost, a.completed_twice, a.in_flight, a.done, a.dead) == (0, 0, 0, 20, 6), a


def test_a_task_id_with_a_space_written_by_hand_is_never_counted_completed_twice(real_client, raw, queue_name):
    q = Queue(real_client, queue_name)
    write_by_hand(
        raw, q, [("x x", {"kind": b"noop", "payload": b"{}"}), ("y y y", {"kind": b"noop", "payload": b"{}"})]
    )
    q.enqueue([Task("x", "noop", {})])
    Worker(real_client, queue_name, "w", WorkerConfig(idle_wait_s=0.02, batch_size=3)).run()
    assert real_client.hmget(q.keys.task("x x"), "status", "attempt") == ["dead", None]  # refused, never run
    assert done_count(q, "x") == 1
    a = audit(q)
    assert (a.completed_twice, a.lost, a.done, a.dead, a.generated) == (0, 0, 1, 2, 3) and a.clean


def test_a_package_over_the_size_limit_is_dead_lettered_whole_and_the_worker_carries_on(real_client, queue_name):
    q = Queue(real_client, queue_name)
    q.enqueue([Task(str(i), "noop", {}) for i in range(7)], package_size=5)  # packages of 5 and 2
    limits = Limits(max_package_size=4)
    Worker(real_client, queue_name, "w", WorkerConfig(idle_wait_s=0.02, limits=limits)).run()
    statuses = {t: s.value for t, s in q.statuses().items()}
    assert statuses == {**{str(i): "dead" for i in range(5)}, "5": "done", "6": "done"}
    assert q.task("0").error.endswith(": 5 tasks, over the limit of 4 (Limits.max_package_size)")
    assert audit(q).clean


def test_a_task_with_more_prerequisites_than_the_limit_is_dead_lettered(real_client, queue_name):
    q = Queue(real_client, queue_name)
    q.enqueue([Task("a", "noop", {}), Task("b", "noop", {}), Task("c", "noop", {}, depends_on=("a", "b"))])
    Worker(real_client, queue_name, "w", WorkerConfig(idle_wait_s=0.02, limits=Limits(max_dependencies=1))).run()
    assert q.task("c").status is Status.DEAD
    assert q.task("c").error == "task c: has 2 prerequisites, over the limit of 1 (Limits.max_dependencies)"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_payload_bytes", 0, "max_payload_bytes must be an integer >= 1 (got 0)"),
        ("max_depth", 501, "max_depth must be at most 500 (got 501)"),
        ("max_int_digits", 5000, "max_int_digits must be at most 4300, Python's own limit (got 5000)"),
        ("max_dependencies", 100_001, "max_dependencies must be at most 100,000"),
        ("max_package_size", True, "max_package_size must be an integer >= 1 (got True)"),
    ],
)
def test_limits_are_validated_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Limits(**{field: value})


def test_decoding_time_is_bounded_for_the_worst_texts_within_the_size_limit():
    worst = ['"\\"' * 300_000 + "[" * 70, '"' * 1_000_000, "[" * 1_000_000, '{"a":' + "1" * 1_000_000 + "}"]
    for text in worst:
        began = time.perf_counter()
        with pytest.raises(MalformedTask):
            parse_payload("t", text)
        assert time.perf_counter() - began < 1.0


def test_results_read_back_are_held_to_the_same_limits():
    with pytest.raises(MalformedTask, match="result nests deeper than the limit"):
        Task.from_hash({"id": "t", "kind": "noop", "payload": "{}", "result": "[" * 100_000})
    with pytest.raises(MalformedTask, match="Limits.max_int_digits"):
        inputs_of(["p", "done", "9" * 5001], task_id="t")
    with pytest.raises(MalformedTask, match="malformed field"):
        Task.from_hash({"id": "t", "kind": "noop", "payload": "{}", "attempt": "9" * 5001})
