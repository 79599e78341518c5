"""Small helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from wqsim import Queue, Reaper, WorkerPool


class FakeClock:
    """A clock that stands still until a test moves it (``clock.now += 5``)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def done_count(queue: Queue, task_id: str) -> int:
    """How many times the durable event stream records ``task_id`` as done."""
    return sum(e["id"].split(" ").count(task_id) for e in queue.events() if e["event"] == "done")


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes; a deadline, not a timing assert."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


@contextlib.contextmanager
def running(pool: WorkerPool, *reapers: Reaper) -> Iterator[WorkerPool]:
    """Start ``pool``; whatever happens, no worker process or reaper thread outlives the test."""
    pool.start()
    try:
        yield pool
    finally:
        shut_down(pool)
        for reaper in reapers:
            reaper.stop()


def shut_down(pool: WorkerPool) -> None:
    """stop(), join(), terminate() if need be."""
    if pool.join(0):
        return
    pool.stop()
    if not pool.join(10):
        pool.terminate()


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_certificates(d: Path) -> Path:
    """In ``d``: a CA (ca.pem), a server certificate it signed for 127.0.0.1 (server.pem, server.key),
    and an unrelated CA (wrong-ca.pem), made with openssl; returns ``d``."""
    for ca in ("ca", "wrong-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(d / f"{ca}.key"),
            "-out",
            str(d / f"{ca}.pem"),
            "-days",
            "2",
            "-subj",
            f"/CN=wqsim test {ca}",
        )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(d / "server.key"),
        "-out",
        str(d / "server.csr"),
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(d / "server.csr"),
        "-CA",
        str(d / "ca.pem"),
        "-CAkey",
        str(d / "ca.key"),
        "-CAcreateserial",
        "-out",
        str(d / "server.pem"),
        "-days",
        "2",
        "-extfile",
        str(d / "ext.cnf"),
    )
    return d
