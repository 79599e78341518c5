"""The listener counts exactly across Redis outages: durable twins, cursors, reconnects, `wqsim listen`."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running, wait_until

from wqsim import Listener, Queue, Reaper, RedisServer, Settlement, Task, WorkerConfig, WorkerPool, connect, generate
from wqsim.connection import RedisUnavailable

WORKER_IDS = ["1", "2", "3"]
AOF_ARGS = ("--appendonly", "yes", "--appendfsync", "always")
WQSIM = str(Path(sys.executable).parent / "wqsim")  # the venv's console script


# -- helpers ----------------------------------------------------------------------


def settle_all(q: Queue, outcome: str = "done", count: int = 1, worker: str = "w1") -> list[str]:
    """Claim ``count`` tasks and settle them all with ``outcome`` in one call; returns their ids."""
    claim = q.claim(worker, lease_ms=5000, count=count)
    q.settle(
        worker,
        [
            Settlement(t.id, claim.lease, outcome, "null" if outcome == "done" else "boom", 1.0, 2.0)
            for t in claim.tasks
        ],
        lease_ms=5000,
    )
    return [t.id for t in claim.tasks]


class LogSignal(logging.Handler):
    """Sets ``seen`` once a log message contains ``needle``; keeps every message."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.seen = threading.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if self.needle in message:
            self.seen.set()


@pytest.fixture
def signalled_logger(queue_name: str) -> Iterator[tuple[logging.Logger, LogSignal]]:
    logger = logging.getLogger(f"wqsim.test.listener.{queue_name}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handler = LogSignal("Listener reconnected")
    logger.addHandler(handler)
    yield logger, handler
    logger.removeHandler(handler)


class Output(threading.Thread):
    """Reads a process's output line by line; ``wait_for`` blocks on a condition until a line matches."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def run(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # EOF: wake waiters
            self.changed.notify_all()

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: any(needle in line for line in self.lines), timeout_s)

    @property
    def text(self) -> str:
        with self.changed:
            return "\n".join(self.lines)


def start_listen(url: str, *args: str) -> tuple[subprocess.Popen, Output]:
    env = {**os.environ, "REDIS_URL": url}
    proc = subprocess.Popen(
        [WQSIM, "listen", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output = Output(proc.stdout)
    output.start()
    return proc, output


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def sigkill_and_restart(server: RedisServer, outage_s: float = 2.0) -> RedisServer:
    """SIGKILL redis-server, keep it down ``outage_s``, start it again on the same port and data."""
    assert server.process is not None
    server.process.kill()
    server.process.wait()
    server.stop()  # closes its pipe; the data directory is the caller's and stays
    time.sleep(outage_s)  # the outage itself
    return RedisServer(port=server.port, dir=server.dir, extra_args=server.extra_args).start()


# -- counting: entry ids, cursors, plain messages -------------------------------------------


def test_a_message_at_or_before_the_cursor_is_not_counted_twice(make_queue):
    q = make_queue()
    generate(q, 2, duration_ms=0)
    settle_all(q)  # task 1, recorded before the listener starts
    listener = Listener(q.client, q.name, ["w1", "w2"], since="0").start()  # replays it from the stream
    (first,) = [e["entry"] for e in q.events() if e["event"] == "done"]
    q.client.publish(q.keys.progress_channel, f"{first} done 1")  # already counted by the catch-up
    settle_all(q)  # task 2, counted from its message
    second = [e["entry"] for e in q.events() if e["event"] == "done"][-1]
    q.client.publish(q.keys.progress_channel, f"{second} done 2")  # the same message again
    finish = q.finish("w1")
    q.client.publish(q.keys.finished_channel, f"{finish} w1")
    q.finish("w2")
    result = listener.wait(timeout_s=5)
    assert (result.finished, result.progress, result.timed_out) == (["w1", "w2"], {"done": 2, "dead": 0}, False)


def test_messages_without_an_entry_id_are_counted_as_they_come(make_queue):
    q = make_queue()
    seen: list[tuple[str, str]] = []
    listener = Listener(q.client, q.name, ["a", "1-2"], on_progress=lambda s, i: seen.append((s, i))).start()
    q.client.publish(q.keys.progress_channel, "done 7 8")
    q.client.publish(q.keys.progress_channel, "dead 9")
    q.client.publish(q.keys.finished_channel, "a")
    q.client.publish(q.keys.finished_channel, "1-2")  # a lone worker id, even one shaped like an entry id
    result = listener.wait(timeout_s=5)
    assert (result.finished, result.progress) == (["a", "1-2"], {"done": 2, "dead": 1})
    assert seen == [("done", "7"), ("done", "8"), ("dead", "9")]


def test_since_now_counts_only_what_happens_after_start_and_since_zero_replays_the_record(make_queue):
    q = make_queue()
    generate(q, 3, duration_ms=0, max_attempts=1)
    settle_all(q)
    settle_all(q, "dead")
    q.finish("early")
    now = Listener(q.client, q.name, ["late"]).start()
    replay = Listener(q.client, q.name, ["early", "late"], since="0").start()
    settle_all(q)
    q.finish("late")
    assert now.wait(timeout_s=5).finished == ["late"] and now.progress == {"done": 1, "dead": 0}
    assert replay.wait(timeout_s=5).finished == ["early", "late"] and replay.progress == {"done": 2, "dead": 1}


def test_a_replay_counts_the_dependents_cancelled_by_a_dead_task(make_queue):
    q = make_queue()
    q.enqueue([Task(id="a", kind="noop", max_attempts=1), Task(id="b", kind="noop", depends_on=("a",))])
    settle_all(q, "dead")  # a dies; b is cancelled in the same call
    seen: list[tuple[str, str]] = []
    listener = Listener(q.client, q.name, None, since="0", on_progress=lambda s, i: seen.append((s, i))).start()
    listener.close()
    assert listener.progress == {"done": 0, "dead": 1, "cancelled": 1}
    assert seen == [("dead", "a"), ("cancelled", "b")]


def test_should_stop_ends_the_wait_early_without_calling_it_a_timeout(make_queue, captured_logger):
    q = make_queue()
    logger, handler = captured_logger
    idle_calls: list[float] = []
    stop = threading.Event()
    listener = Listener(q.client, q.name, ["w1"], logger=logger).start()
    threading.Timer(0.3, stop.set).start()
    result = listener.wait(timeout_s=30, should_stop=stop.is_set, on_idle=lambda: idle_calls.append(time.monotonic()))
    assert (result.stopped, result.timed_out, result.missing) == (True, False, ["w1"])
    assert idle_calls  # called while nothing came
    assert not any("timed out" in m for m in handler.messages)


def test_a_listener_stopped_before_reading_the_last_finish_still_counts_it(make_queue):
    # wqsim listen is SIGTERMed as soon as the last worker exits: that worker's finish
    # may still sit unread on the socket, so stopping reads what the streams recorded.
    q = make_queue()
    generate(q, 1, duration_ms=0)
    listener = Listener(q.client, q.name, ["w1", "w2"]).start()
    settle_all(q)
    q.finish("w1")
    q.finish("w2")  # both published and recorded; the listener has read neither
    result = listener.wait(timeout_s=30, should_stop=lambda: True)
    assert (result.finished, result.progress, result.stopped) == (["w1", "w2"], {"done": 1, "dead": 0}, True)


# -- outages ---------------------------------------------------------------------------


@pytest.mark.real_redis
@pytest.mark.parametrize("client", ["redis-server"], indirect=True)
def test_events_published_while_the_listener_is_disconnected_are_counted_exactly_once(make_queue, signalled_logger):
    q = make_queue()
    logger, log = signalled_logger
    generate(q, 8, duration_ms=0, max_attempts=1)
    seen: list[str] = []
    listener = Listener(
        q.client,
        q.name,
        ["w1", "w2"],
        logger=logger,
        reconnect_s=10,
        on_progress=lambda status, task_id: seen.append(task_id),
    ).start()
    outcome: dict[str, object] = {}
    settle_all(q, count=2)  # heard live (buffered until wait() reads it)

    q.client.client_kill_filter(_type="pubsub")  # the listener's subscription is gone...
    assert q.client.pubsub_numsub(q.keys.progress_channel, q.keys.finished_channel) == [
        (q.keys.progress_channel, 0),
        (q.keys.finished_channel, 0),
    ]
    settle_all(q, count=3)  # ...so these messages reach nobody; their stream entries remain
    settle_all(q, "dead")
    q.finish("w1")

    waiting = threading.Thread(target=lambda: outcome.update(result=listener.wait(timeout_s=30)))
    waiting.start()
    assert log.seen.wait(15), log.messages
    settle_all(q, count=2)  # heard live again after the catch-up
    q.finish("w2")
    waiting.join(15)
    result = outcome["result"]
    assert (result.finished, result.progress, result.timed_out) == (["w1", "w2"], {"done": 7, "dead": 1}, False)
    assert sorted(seen, key=int) == [str(i) for i in range(1, 9)]  # every task exactly once
    assert sum("lost its Redis connection" in m for m in log.messages) == 1
    assert "Listener reconnected; caught up 5 event(s) from the stream" in log.messages


@pytest.mark.real_redis
def test_redis_unreachable_for_longer_than_reconnect_s_raises_redis_unavailable(tmp_path, queue_name):
    server = RedisServer(dir=str(tmp_path)).start()
    try:
        listener = Listener(connect(server.url), queue_name, 1, reconnect_s=0.5).start()
        server.stop()
        with pytest.raises(
            RedisUnavailable, match=f"the listener on queue '{queue_name}' could not reach Redis for 0.5 s"
        ):
            listener.wait(timeout_s=30)
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.real_redis
def test_a_listener_counts_every_worker_and_task_exactly_once_across_a_sigkilled_aof_redis(
    tmp_path, queue_name, signalled_logger
):
    n = 1500
    logger, log = signalled_logger
    server = RedisServer(dir=str(tmp_path), extra_args=AOF_ARGS).start()
    restarted: RedisServer | None = None
    try:
        q = Queue(connect(server.url), queue_name)
        generate(q, n, duration_ms=2, max_attempts=20)
        listener = Listener(connect(server.url), queue_name, WORKER_IDS, logger=logger, reconnect_s=30).start()
        outcome: dict[str, object] = {}
        waiting = threading.Thread(target=lambda: outcome.update(result=listener.wait(timeout_s=60)))
        config = WorkerConfig(lease_s=5, idle_wait_s=0.05, reconnect_s=30)
        pool = WorkerPool(server.url, queue_name, WORKER_IDS, config, mode="process", restart_crashed=False)
        reaper = Reaper(Queue(connect(server.url), queue_name), interval_s=0.1)
        with running(pool, reaper.start()):
            waiting.start()
            assert wait_until(lambda: q.counters().get("done", 0) >= 200, timeout_s=30)
            q.client.close()
            restarted = sigkill_and_restart(server)
            assert 200 <= Queue(connect(server.url), queue_name).counters()["done"] < n  # killed mid-run
            waiting.join(60)
            assert pool.join(30)
        result = outcome["result"]
        assert sorted(result.finished) == WORKER_IDS and not result.timed_out
        assert result.progress == {"done": n, "dead": 0}
        assert sum("lost its Redis connection" in m for m in log.messages) == 1
        assert log.seen.is_set()
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


@pytest.mark.slow
@pytest.mark.real_redis
def test_wqsim_listen_rides_out_a_sigkilled_aof_redis_and_prints_the_exact_final_count(tmp_path, queue_name):
    n = 1500
    server = RedisServer(dir=str(tmp_path), extra_args=AOF_ARGS).start()
    restarted: RedisServer | None = None
    proc = None
    try:
        q = Queue(connect(server.url), queue_name)
        generate(q, n, duration_ms=2, max_attempts=20)
        proc, output = start_listen(server.url, "--workers", "3", "--queue", queue_name)
        assert output.wait_for("Listening on queue", 20), output.text
        config = WorkerConfig(lease_s=5, idle_wait_s=0.05, reconnect_s=30)
        pool = WorkerPool(server.url, queue_name, WORKER_IDS, config, mode="process", restart_crashed=False)
        reaper = Reaper(Queue(connect(server.url), queue_name), interval_s=0.1)
        with running(pool, reaper.start()):
            assert wait_until(lambda: q.counters().get("done", 0) >= 200, timeout_s=30)
            q.client.close()
            restarted = sigkill_and_restart(server)
            assert proc.wait(60) == 0, output.text
            assert pool.join(30)
        output.join(5)
        text = output.text
        assert f"Progress: {n} done" in text, text[-3000:]
        for worker in WORKER_IDS:
            assert f"Received finished message from worker {worker}." in text
        assert "All workers finished." in text
        assert text.count("Listener lost its Redis connection") == 1 and "Listener reconnected" in text
    finally:
        if proc is not None:
            stop(proc)
        server.stop()
        if restarted is not None:
            restarted.stop()


# -- wqsim listen ------------------------------------------------------------------------


@pytest.mark.real_redis
def test_wqsim_listen_prints_its_last_progress_count_soon_after_the_last_event_without_a_new_message(
    redis_url, queue_name
):
    q = Queue(connect(redis_url), queue_name)
    proc, output = start_listen(redis_url, "--queue", queue_name, "--every-s", "0.5")
    try:
        assert output.wait_for("Listening on queue", 20), output.text
        generate(q, 5, duration_ms=0)
        settle_all(q, count=5)  # one message: the first id prints at once, the other four are due later
        assert output.wait_for("Progress: 5 done", 20), output.text
        assert proc.poll() is None  # printed while listening, not at exit
    finally:
        assert stop(proc) == 0, output.text
        q.purge()


@pytest.mark.real_redis
@pytest.mark.parametrize("client", ["redis-server"], indirect=True)
def test_a_subscription_that_redis_py_renews_by_itself_is_caught_up_too(make_queue, signalled_logger):
    """redis-py reconnects a dropped pub/sub connection on its next read and subscribes again,
    without an error: the second confirmation is then the listener's cue to catch up."""
    q = make_queue()
    logger, log = signalled_logger
    generate(q, 2, duration_ms=0)
    listener = Listener(q.client, q.name, ["w1"], logger=logger).start()
    listener._pubsub.connection.disconnect()  # as redis-py's own recovery leaves it; the next read reconnects
    settle_all(q, count=2)
    q.finish("w1")
    result = listener.wait(timeout_s=10)
    assert (result.finished, result.progress, result.timed_out) == (["w1"], {"done": 2, "dead": 0}, False)
    assert "Listener reconnected; caught up 3 event(s) from the stream" in log.messages
    assert not any("lost its Redis connection" in m for m in log.messages)  # no error reached the listener
