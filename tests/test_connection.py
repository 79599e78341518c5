"""connect(): REDIS_URL, the embedded server both ways, bounded retries."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wqsim import RedisUnavailable, connect
from wqsim.connection import BadRedisUrl, redact
from wqsim.server import free_port
from wqsim.urls import check_url, startup_urls

PROBE = """
import logging, wqsim
logging.basicConfig(level=logging.INFO, format="%(message)s")
report = wqsim.run(wqsim.RunConfig(queue="probe", tasks=20, duration_ms=1, workers=2))
print("OK", report.audit.done, report.audit.lost, type(wqsim.embedded_server()).__name__)
"""


def run_probe(env_overrides: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(env_overrides)
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, env=env)


def test_without_redis_url_a_redis_server_is_embedded_when_the_binary_exists():
    proc = run_probe({})
    assert proc.returncode == 0, proc.stderr
    assert "OK 20 0 RedisServer" in proc.stdout
    assert "Using embedded redis-server at redis://127.0.0.1:" in proc.stderr


@pytest.mark.parametrize("how", ["forced", "no binary on PATH"])
def test_fakeredis_is_embedded_otherwise_and_worker_processes_behave_the_same(how):
    env = {"WQSIM_EMBEDDED": "fakeredis"} if how == "forced" else {"PATH": os.path.dirname(sys.executable)}
    proc = run_probe(env)
    assert proc.returncode == 0, proc.stderr
    assert "OK 20 0 FakeRedisServer" in proc.stdout
    assert "Using embedded fakeredis at redis://127.0.0.1:" in proc.stderr


def test_connect_uses_redis_url_from_the_environment(redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert connect().ping()


def test_connect_gives_up_after_bounded_attempts_naming_the_url():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(RedisUnavailable, match=rf"cannot reach Redis at {url} after 2 attempts"):
        connect(url, attempts=2)


def test_a_malformed_url_is_a_clear_error():
    with pytest.raises(RedisUnavailable, match="bad Redis URL"):
        connect("http://example.invalid")


def test_a_url_listing_several_hosts_gives_one_url_per_host_with_its_credentials_database_and_options():
    assert startup_urls("redis://u:pw@h1:7000,h2:7001/2?ssl_ca_certs=x") == [
        "redis://u:pw@h1:7000/2?ssl_ca_certs=x",
        "redis://u:pw@h2:7001/2?ssl_ca_certs=x",
    ]
    assert startup_urls("redis://h1:7000/0") == ["redis://h1:7000/0"]
    check_url("redis://u:pw@h1:7000,h2:7001/0")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h1:7000,,h2:7001/0", "an empty entry"),
        ("redis://h1:7000,h2:port/0", "Port could not be cast"),
        ("redis://h1:7000,h2:70000/0", "Port out of range"),
    ],
)
def test_a_list_of_hosts_with_an_empty_or_bad_entry_is_a_bad_url(url, problem):
    with pytest.raises(ValueError, match=problem):
        check_url(url)
    with pytest.raises(BadRedisUrl, match=problem):
        connect(url, attempts=1)


@pytest.mark.real_redis
def test_a_list_of_hosts_skips_one_that_is_down_and_is_refused_in_one_line_when_it_names_a_single_server(redis_url):
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    url = f"redis://127.0.0.1:{free_port()},127.0.0.1:{port}/0"  # the first is down: the second answers
    with pytest.raises(BadRedisUrl, match=rf"127\.0\.0\.1:{port}/0 is not a cluster node") as refused:
        connect(url, attempts=1)
    assert "\n" not in str(refused.value)


def test_a_list_of_hosts_none_of_which_answers_names_each_in_one_line():
    first, second = free_port(), free_port()
    url = f"redis://127.0.0.1:{first},127.0.0.1:{second}/0"
    with pytest.raises(RedisUnavailable, match=r"cannot reach any startup node .* after 2 attempts") as unreachable:
        connect(url, attempts=2)
    message = str(unreachable.value)
    assert f"127.0.0.1:{first}/0" in message and f"127.0.0.1:{second}/0" in message and "\n" not in message


def test_redact_hides_the_password_only():
    assert redact("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_a_redis_server_removes_the_temporary_directory_it_made_but_keeps_one_it_was_given(tmp_path):
    from wqsim import RedisServer

    with RedisServer() as made:
        made_dir = made.dir
        assert os.path.isdir(made_dir)
    assert not os.path.exists(made_dir)
    with RedisServer(dir=str(tmp_path)):
        pass
    assert tmp_path.is_dir()
