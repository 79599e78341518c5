"""Least privilege, TLS and Redis URLs, each on a real redis-server this module starts.

A Redis user with exactly the rule ``wqsim acl`` prints runs every command;
a permission it lacks, inside a script or not, ends the command in one line
with exit code 2 and no restart loop; ``rediss://`` with the right CA works
and a wrong CA fails in one line; a URL without a host, with a bad database,
or pointing at something that is not Redis is one line with its exit code.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import make_certificates

import wqsim
from wqsim import RedisServer, acl
from wqsim.scripts import SCRIPT_NAMES, full_source, source
from wqsim.server import free_port
from wqsim.urls import check_url

PASSWORD = "s3cret-pw"


def wqsim_cli(*args: str, url: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    if url is not None:
        env["REDIS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "wqsim", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower() or "Traceback" in line]


# -- the rule ----------------------------------------------------------------------------------


def test_the_rule_grants_the_queues_keys_and_channels_and_only_the_listed_commands():
    rule = acl.rule("demo")
    assert rule.startswith("resetkeys ~wqsim:{demo}:* resetchannels &wqsim:{demo}:* -@all +")
    granted = re.findall(r"\+(\S+)", rule)
    assert sorted(granted) == sorted(acl.COMMANDS)
    assert wqsim.acl.rule is acl.rule and "acl" in wqsim.__all__


def test_every_command_a_script_calls_is_in_the_rule():
    called = {c for name in ("_lib", *SCRIPT_NAMES) for c in acl._commands_in(source(name))}
    assert called, "the scan found no redis.call"
    assert called <= set(acl.COMMANDS), f"scripts call commands the rule lacks: {sorted(called - set(acl.COMMANDS))}"


def test_every_command_in_the_rule_is_used_by_a_script_or_named_code():
    unused = set(acl.COMMANDS) - set(acl.script_commands()) - set(acl.PYTHON_USES)
    assert not unused, f"the rule grants commands nothing sends: {sorted(unused)}"


def test_wqsim_acl_prints_one_setuser_line_without_a_password():
    proc = wqsim_cli("acl", "--queue", "demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ACL SETUSER wqsim-demo on {acl.rule('demo')}\n"
    assert ">" not in proc.stdout.replace("-@all", "")  # no password: it cannot log in until one is set
    named = wqsim_cli("acl", "--queue", "demo", "--user", "bob")
    assert named.stdout.startswith("ACL SETUSER bob on resetkeys ~wqsim:{demo}:* ")
    bad = wqsim_cli("acl", "--queue", "demo", "--user", "bob smith")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_a_script_permission_error_is_mapped_to_the_command_on_its_line():
    sha = hashlib.sha1(full_source("heartbeat").encode()).hexdigest()
    line = next(i for i, text in enumerate(full_source("heartbeat").splitlines(), 1) if "'PEXPIRE'" in text)
    exc = redis.ResponseError(
        f"The user executing the script can't run this command or subcommand script: {sha}, on @user_script:{line}."
    )
    assert acl.explain(exc, "q", "bob") == (
        "Redis user 'bob' may not run PEXPIRE (needed by heartbeat.lua); add it with: wqsim acl --queue q --user bob"
    )
    assert acl.explain(redis.ResponseError("WRONGTYPE Operation against a key"), "q") is None


# -- a server with users -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acl_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def admin(acl_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=acl_server.port, decode_responses=True)
    client.execute_command("ACL", "LOG", "RESET")
    yield client
    client.close()


def make_user(
    admin: redis.Redis,
    name: str,
    queue: str,
    without: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    shards: int = 1,
) -> None:
    """A user with ``wqsim acl``'s rule for ``queue``, minus the commands ``without``, plus ``extra``."""
    rule = acl.rule(queue, shards).split() + [f"-{c}" for c in without] + list(extra)
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rule)


def user_url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{PASSWORD}@127.0.0.1:{server.port}/0"


def queue_keys(admin: redis.Redis, queue: str) -> list[str]:
    return list(admin.scan_iter(match=f"wqsim:{{{queue}}}:*"))


def test_every_cli_command_runs_as_a_user_with_exactly_the_rule(acl_server, admin):
    make_user(admin, "wq-full", "full")
    url = user_url(acl_server, "wq-full")
    admin.config_resetstat()

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        proc = wqsim_cli(*args, "--queue", "full", url=url)
        assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
        assert "NOPERM" not in proc.stderr and "Traceback" not in proc.stderr
        return proc

    # Heartbeats (PEXPIRE) with leases shorter than the tasks; chaos in thread mode ends leases itself.
    ok("run", "--tasks", "12", "--workers", "2", "--duration-ms", "150", "--lease-s", "0.3", "--batch-size", "2", "-q")
    ok(
        "run",
        "--tasks",
        "60",
        "--workers",
        "2",
        "--duration-ms",
        "5",
        "--chaos",
        "--seed",
        "1",
        "--mode",
        "thread",
        "-q",
    )
    ok("run", "--graph", "diamond", "--tasks", "10", "--workers", "2", "-q")
    # Enqueued in several chunks (MULTI/EXEC), as work packages, into a queue purged first.
    ok("generate", "--tasks", "6000", "--kind", "noop", "--package-size", "10", "--fresh")
    listener = subprocess.Popen(
        [sys.executable, "-m", "wqsim", "listen", "--queue", "full", "--workers", "2", "--timeout-s", "120"],
        env={**os.environ, "REDIS_URL": url},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stderr is not None
        for line in listener.stderr:  # it is subscribed once it says so: then start the workers
            if "Listening on queue" in line:
                break
        ok("work", "--once", "--workers", "2", "--batch-size", "5", "-q")
        assert listener.wait(60) == 0
    finally:
        listener.kill()
        listener.wait()
    ok("reap", "--once")
    status = ok("status")
    assert "generated 6000, done 6000" in status.stdout
    # The paths that need the rarer commands did run (as the user: the admin sends none of these).
    ran = {name.removeprefix("cmdstat_") for name in admin.info("commandstats")}
    assert {"pexpire", "multi", "exec", "subscribe", "xrevrange", "scan", "blpop"} <= ran
    # The up-front checks' own questions are refused and logged, and nothing else is: ACL WHOAMI
    # (permissions), and CONFIG GET then INFO (the eviction policy), which the rule does not grant
    # because CONFIG GET would reveal the password.
    refused = {entry["object"] for entry in admin.execute_command("ACL", "LOG")}
    assert refused <= {"acl|whoami", "config|get", "info"}, f"refused and swallowed: {refused}"


def test_wqsim_acl_with_shards_grants_the_queue_and_every_shard_and_nothing_more():
    proc = wqsim_cli("acl", "--queue", "demo", "--shards", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"ACL SETUSER wqsim-demo on {acl.rule('demo', 3)}\n"
    patterns = [word for word in proc.stdout.split() if word[0] in "~&"]
    names = ["demo", "demo:0", "demo:1", "demo:2"]
    assert patterns == [f"~wqsim:{{{n}}}:*" for n in names] + [f"&wqsim:{{{n}}}:*" for n in names]


def test_every_sharded_role_runs_as_a_user_with_the_rule_for_the_queue_and_its_shards(acl_server, admin):
    make_user(admin, "wq-sharded", "sharded", shards=3)
    url = user_url(acl_server, "wq-sharded")

    def ok(*args: str) -> subprocess.CompletedProcess[str]:
        proc = wqsim_cli(*args, "--queue", "sharded", "--shards", "3", url=url)
        assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
        assert "NOPERM" not in proc.stderr and "Traceback" not in proc.stderr
        return proc

    ok("run", "--tasks", "30", "--workers", "2", "--duration-ms", "1", "-q")
    ok("generate", "--tasks", "60", "--kind", "noop", "--fresh")
    ok("work", "--once", "--workers", "2", "-q")
    ok("reap", "--once")
    assert "audit, all shards: generated 60, done 60" in ok("status").stdout
    refused = {entry["object"] for entry in admin.execute_command("ACL", "LOG")}
    assert refused <= {"acl|whoami", "config|get", "info"}, f"refused and swallowed: {refused}"


def test_a_user_with_the_rule_of_the_queue_alone_is_told_to_add_its_shards(acl_server, admin):
    make_user(admin, "wq-plain", "plain")
    proc = wqsim_cli(
        "generate", "--queue", "plain", "--shards", "3", "--tasks", "5", url=user_url(acl_server, "wq-plain")
    )
    assert proc.returncode == 2, proc.stderr
    [line] = error_lines(proc.stderr)
    assert "may not use the keys of queue 'plain'" in line
    assert line.endswith("grant them with: wqsim acl --queue plain --user wq-plain --shards 3")


def test_a_user_limited_to_another_queues_keys_is_refused_in_one_line(acl_server, admin):
    make_user(admin, "wq-other", "other")
    url = user_url(acl_server, "wq-other")
    for command in ("generate", "status", "reap", "listen", "run"):
        args = [command, "--queue", "mine"] + (["--workers", "1"] if command == "run" else [])
        proc = wqsim_cli(*args, url=url)
        assert proc.returncode == 2, f"{command}: {proc.stderr}"
        assert error_lines(proc.stderr) == [
            "wqsim: error: Redis user 'wq-other' may not use the keys of queue 'mine' (wqsim:{mine}:*); "
            "grant them with: wqsim acl --queue mine --user wq-other"
        ], f"{command}: {proc.stderr}"
    assert queue_keys(admin, "mine") == []


def test_a_worker_refused_a_key_stops_the_pool_without_restarts(acl_server, admin):
    make_user(admin, "wq-other2", "other")
    proc = wqsim_cli("work", "--queue", "mine", "--workers", "2", "--once", url=user_url(acl_server, "wq-other2"))
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        "wqsim: error: Redis user 'wq-other2' may not use the keys of queue 'mine' (wqsim:{mine}:*); "
        "grant them with: wqsim acl --queue mine --user wq-other2"
    ]
    assert "replacement" not in proc.stderr


def test_wait_ready_gives_up_as_soon_as_a_refused_pool_exits(acl_server, admin):
    """Workers refused the queue's keys never get ready: the pool stops, and wait_ready says False then, not later."""
    make_user(admin, "wq-ready", "other")
    pool = wqsim.WorkerPool(user_url(acl_server, "wq-ready"), "mine", ["a", "b"]).start()
    assert pool.wait_ready(60) is False
    assert pool.join(10)
    assert pool.refused is not None and "may not use the keys of queue 'mine'" in pool.refused


@pytest.mark.parametrize(
    ("missing", "where", "mode"),
    [
        ("pexpire", "heartbeat.lua", "process"),  # in the watchdog thread, after the first ping
        ("rpop", "claim.lua through _lib.lua", "process"),  # in the first claim
        ("pexpire", "heartbeat.lua", "thread"),
    ],
)
def test_a_command_missing_inside_a_script_stops_work_in_one_line_with_no_restart_loop(
    acl_server, admin, missing, where, mode
):
    queue = f"miss-{missing}-{mode}"
    wqsim.generate(wqsim.Queue(admin, queue), 4, 400.0)  # written as the admin: work alone is refused
    make_user(admin, f"wq-{missing}", queue, without=(missing,))
    proc = wqsim_cli(
        "work",
        "--queue",
        queue,
        "--workers",
        "2",
        "--once",
        "--lease-s",
        "0.3",
        "--mode",
        mode,
        url=user_url(acl_server, f"wq-{missing}"),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        f"wqsim: error: Redis user 'wq-{missing}' may not run {missing.upper()} (needed by {where}); "
        f"add it with: wqsim acl --queue {queue} --user wq-{missing}"
    ], proc.stderr
    assert "replacement" not in proc.stderr


def test_run_stops_in_one_line_when_a_worker_is_refused_a_command(acl_server, admin):
    make_user(admin, "wq-run", "runq", without=("pexpire",))
    proc = wqsim_cli(
        "run",
        "--queue",
        "runq",
        "--tasks",
        "6",
        "--workers",
        "2",
        "--duration-ms",
        "400",
        "--lease-s",
        "0.3",
        url=user_url(acl_server, "wq-run"),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        "wqsim: error: Redis user 'wq-run' may not run PEXPIRE (needed by heartbeat.lua); "
        "add it with: wqsim acl --queue runq --user wq-run"
    ], proc.stderr


def test_a_user_who_may_ask_acl_dryrun_is_checked_before_anything_is_written(acl_server, admin):
    make_user(admin, "wq-dry", "dry", without=("pexpire", "xrevrange"), extra=("+acl|whoami", "+acl|dryrun"))
    proc = wqsim_cli("generate", "--queue", "dry", "--tasks", "5", url=user_url(acl_server, "wq-dry"))
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [
        "wqsim: error: Redis user 'wq-dry' may not run PEXPIRE, XREVRANGE (needed by PEXPIRE: heartbeat.lua; "
        "XREVRANGE: snapshot.lua, the listener); add them with: wqsim acl --queue dry --user wq-dry"
    ], proc.stderr
    assert queue_keys(admin, "dry") == []
    make_user(admin, "wq-dry-ok", "dry", extra=("+acl|whoami", "+acl|dryrun"))
    wqsim.Queue(admin, "dry").purge()
    assert (
        wqsim_cli("generate", "--queue", "dry", "--tasks", "5", url=user_url(acl_server, "wq-dry-ok")).returncode == 0
    )


# -- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate it signed for 127.0.0.1, and an unrelated CA (made with openssl)."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_port(certificates: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server that speaks TLS only; ready once it logs that it accepts connections."""
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("tls-redis")),
            "--loglevel",
            "notice",
            "--tls-cert-file",
            str(certificates / "server.pem"),
            "--tls-key-file",
            str(certificates / "server.key"),
            "--tls-ca-cert-file",
            str(certificates / "ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server with TLS did not start: " + "".join(seen[-5:]))
        threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep its pipe drained
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_full_run_passes_over_tls_with_the_ca_named_in_the_url(tls_port, certificates):
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates / 'ca.pem'}"
    proc = wqsim_cli("run", "--queue", "tls", "--tasks", "30", "--workers", "2", "--duration-ms", "1", url=url)
    assert proc.returncode == 0, proc.stderr
    assert "Summary: 30 done, 0 dead, 0 lost, 0 completed twice" in proc.stderr


def test_a_wrong_ca_fails_in_one_line_naming_tls_verification(tls_port, certificates):
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates / 'wrong-ca.pem'}"
    proc = wqsim_cli("status", url=url)
    assert proc.returncode == 3
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"wqsim: error: TLS verification failed for Redis at {url}: ")


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("redis://", "no host"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:{port}/abc", "the path must be a database number, e.g. /0 (got '/abc')"),
        ("redis://127.0.0.1:{port}/99", "the server has no such database"),
        ("redis://127.0.0.1:{port}/0?db=x", "db must be a database number"),
        ("http://127.0.0.1:{port}/0", "the scheme must be one of redis://, rediss://, unix:// (got http://)"),
        ("127.0.0.1:{port}", "the scheme must be one of"),
        ("redis://127.0.0.1:{port}/0?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs names a file that does not exist"),
        ("redis://127.0.0.1:{port}/0?no_such_option=1", "no_such_option"),
    ],
)
def test_a_bad_url_is_one_line_and_exit_2_never_a_silent_default(acl_server, url, needle):
    url = url.format(port=acl_server.port)
    proc = wqsim_cli("status", url=url)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("wqsim: error: bad Redis URL")
    assert needle in proc.stderr


def test_good_urls_pass_the_check():
    for url in (
        "redis://h:6379/0",
        "redis://h",
        "redis://u:p@h:1/15",
        "rediss://h:6380/0",
        "unix:///run/redis.sock?db=2",
    ):
        check_url(url)


class _Garbage(threading.Thread):
    """A TCP server that answers every connection with bytes that are not the Redis protocol."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"\x00\xffnot redis\r\n")


@pytest.fixture(params=["http", "garbage"])
def not_redis(request: pytest.FixtureRequest) -> Iterator[int]:
    if request.param == "http":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server.server_address[1]
        server.shutdown()
        server.server_close()
    else:
        garbage = _Garbage()
        garbage.start()
        yield garbage.port
        garbage.sock.close()


class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_is_not_redis_is_one_line_and_exit_3(not_redis):
    url = f"redis://127.0.0.1:{not_redis}/0"
    proc = wqsim_cli("status", url=url)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"wqsim: error: the server at {url} is not Redis: ")
