"""The embedded Redis used when no REDIS_URL is given.

Preferably a real ``redis-server`` on a free loopback port, in a temporary
directory, without persistence, stopped at exit and also when the parent is
killed (PR_SET_PDEATHSIG). The directory goes with it: a killed parent cannot
clean up, so a small janitor process, holding the read end of a pipe whose
write end only the parent has, waits for that pipe to close (the parent has
exited, however it exited), then for the server to exit, and removes the
directory. Without the binary, a fakeredis TCP server in a background thread,
so worker processes can still connect by URL.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

import redis

log = logging.getLogger("wqsim.server")

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when its parent dies (Linux only;
    elsewhere the server is stopped by atexit alone)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# The janitor: argv = [dir, server pid]. Reads stdin until EOF (the parent is gone), waits for
# the server to exit (it was sent SIGTERM with its parent), then removes the directory.
_JANITOR = """
import os, shutil, sys, time
sys.stdin.buffer.read()
path, pid = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(0.05)
shutil.rmtree(path, ignore_errors=True)
"""


def _start_janitor(path: str, server_pid: int) -> subprocess.Popen[bytes]:
    """Start the process that removes ``path`` once this process and the server have exited."""
    return subprocess.Popen(
        [sys.executable, "-S", "-c", _JANITOR, path, str(server_pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's process group must not stop it early
    )


@dataclass
class RedisServer:
    """A redis-server process owned by this Python process."""

    port: int = 0
    binary: str = "redis-server"
    extra_args: tuple[str, ...] = ()
    dir: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _own_dir: bool = field(default=False, repr=False)
    _janitor: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        path = shutil.which(self.binary)
        if path is None:
            raise FileNotFoundError(f"{self.binary} not found on PATH")
        self.port = self.port or free_port()
        if not self.dir:
            self.dir, self._own_dir = tempfile.mkdtemp(prefix="wqsim-redis-"), True
        args = [
            path,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with_parent
        )
        if self._own_dir:
            self._janitor = _start_janitor(self.dir, self.process.pid)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace").strip() if self.process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start (code {self.process.returncode}): {err}")
                try:
                    client.ping()
                    break
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(
                            f"redis-server on port {self.port} did not answer within {timeout_s} s"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        if self._own_dir:  # a directory the caller passed in (to restart on the same data) is kept
            shutil.rmtree(self.dir, ignore_errors=True)
            self._own_dir = False
        if self._janitor is not None:  # nothing left for it to do: let it go
            assert self._janitor.stdin is not None
            self._janitor.stdin.close()
            self._janitor.wait()
            self._janitor = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeRedisServer:
    """fakeredis served over TCP from a daemon thread, for machines without redis-server."""

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer

        self.port = free_port()
        self._server = TcpFakeServer(("127.0.0.1", self.port), server_type="redis")
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="wqsim-fakeredis", daemon=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FakeRedisServer:
        self._thread.start()
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_embedded(backend: str = "auto") -> RedisServer | FakeRedisServer:
    """Start an embedded server: 'redis-server', 'fakeredis', or 'auto' (the first that works)."""
    if backend not in ("auto", "redis-server", "fakeredis"):
        raise ValueError(f"backend must be 'auto', 'redis-server' or 'fakeredis' (got {backend!r})")
    if backend in ("auto", "redis-server") and shutil.which("redis-server"):
        server: RedisServer | FakeRedisServer = RedisServer().start()
        log.info("Using embedded redis-server at %s (pid %d)", server.url, server.process.pid)  # type: ignore[union-attr]
        return server
    if backend == "redis-server":
        raise FileNotFoundError("redis-server not found on PATH; install it or set REDIS_URL")
    server = FakeRedisServer().start()
    log.info("Using embedded fakeredis at %s (no redis-server on PATH)", server.url)
    return server
