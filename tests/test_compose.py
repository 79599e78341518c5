"""The composed kit, checked where no Docker engine exists.

compose.yaml is validated against the Compose Specification (check-jsonschema)
and by Debian's docker-compose; then each service's command is run natively,
with the service's environment and REDIS_URL pointed at this session's
redis-server. environment.yml and the Dockerfile must install what
pyproject.toml declares.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import wait_until

from wqsim import Queue, audit, connect, make_tasks
from wqsim.server import _die_with_parent, free_port

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
BIN = Path(sys.executable).parent  # the venv's wqsim and jupyter
REDIS_NODES = {"redis-node-1": "7001", "redis-node-2": "7002", "redis-node-3": "7003"}  # service -> its port


def service_command(name: str) -> list[str]:
    command = SERVICES[name]["command"]
    assert isinstance(command, list), f"{name}: command should be an exec-form list"
    return [str(BIN / command[0]), *command[1:]]


def service_env(name: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The service's environment, with REDIS_URL rewritten to this session's server."""
    env = {**os.environ, **{k: str(v) for k, v in SERVICES[name].get("environment", {}).items()}, **extra}
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    env["REDIS_URL"] = redis_url
    return env


def start(name: str, redis_url: str, *extra_args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        service_command(name) + list(extra_args),
        env=service_env(name, redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str], timeout_s: float = 30) -> tuple[int, str]:
    """SIGTERM (what docker stop sends), then the exit code and everything it printed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out


# -- validation ------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_specification():
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_compose_config_accepts_the_file_with_and_without_each_profile():
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is missing: .ci/run installs Debian's package")
        pytest.skip("Debian's docker-compose is not installed here (.ci/run installs it in CI)")
    for args in ([], ["--profile", "cluster"], ["--profile", "redis-cluster"]):
        proc = subprocess.run(
            [docker_compose, "-f", str(ROOT / "compose.yaml"), *args, "config", "-q"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr


def test_compose_file_has_the_promised_shape():
    assert "version" not in COMPOSE
    redis_service = SERVICES["redis"]
    assert redis_service["image"].startswith("redis:7")
    assert "healthcheck" in redis_service
    assert all(p.startswith("127.0.0.1:") for s in SERVICES.values() for p in s.get("ports", []))
    assert "--appendonly" in redis_service["command"] and "redis-data:/data" in redis_service["volumes"]
    for name in ("app", "lab", "generator", "worker", "reaper", "listener"):
        assert SERVICES[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
        assert SERVICES[name]["build"] == "."
    assert {n for n, s in SERVICES.items() if "cluster" in s.get("profiles", [])} == {
        "generator",
        "worker",
        "reaper",
        "listener",
    }
    assert {n for n, s in SERVICES.items() if "redis-cluster" in s.get("profiles", [])} == {
        *REDIS_NODES,
        "redis-cluster-init",
    }
    for name, port in REDIS_NODES.items():
        node = SERVICES[name]
        assert node["image"].startswith("redis:7")
        assert node["command"] == [
            "redis-server",
            "--port",
            port,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--appendonly",
            "yes",
        ]
        assert node["ports"] == [f"127.0.0.1:{port}:{port}"]
        assert node["healthcheck"]["test"] == ["CMD", "redis-cli", "-p", port, "ping"]
    init = SERVICES["redis-cluster-init"]
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in REDIS_NODES}
    assert init["restart"] == "no" and "ports" not in init
    lab = SERVICES["lab"]
    assert (
        lab["environment"]["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}"
    )  # from the environment; empty means random, never none
    assert not any("token=" in arg.lower() and arg.endswith("=") for arg in lab["command"])


# -- each service's command, run natively ------------------------------------------------


@pytest.mark.real_redis
def test_app_service_runs_the_seed_scenario(redis_url):
    proc = subprocess.run(
        service_command("app"), env=service_env("app", redis_url), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Created 100 work items out of 100" in proc.stderr
    assert "All workers finished." in proc.stderr
    assert "Summary: 100 done, 0 dead, 0 lost, 0 completed twice, 100 executions" in proc.stderr


@pytest.mark.real_redis
@pytest.mark.slow
def test_cluster_services_as_separate_processes_with_a_late_worker_and_an_early_stop_end_with_a_clean_audit(redis_url):
    """The shape of `docker compose --profile cluster up --scale worker=3`: every part its
    own process with its own connection; one worker joins late, one is stopped early."""
    queue = Queue(connect(redis_url), "cluster")
    queue.purge()
    listener = start("listener", redis_url)
    reaper = start("reaper", redis_url)
    early, steady = start("worker", redis_url), start("worker", redis_url)
    late = None
    try:
        generator = subprocess.run(
            service_command("generator"),
            env=service_env("generator", redis_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert generator.returncode == 0, generator.stderr
        assert "Created 400 work items out of 400" in generator.stderr
        assert wait_until(lambda: queue.counters().get("done", 0) >= 50, 30)
        early_code, early_out = stop(early)  # stopped mid-run: finishes or hands back what it holds
        assert early_code == 0, early_out
        late = start("worker", redis_url)
        assert wait_until(queue.drained, 60), audit(queue).summary()
    finally:
        outputs = {}
        for name, proc in (("steady", steady), ("late", late), ("reaper", reaper), ("listener", listener)):
            if proc is not None:
                outputs[name] = stop(proc)
        for proc in (early, steady, late, reaper, listener):
            if proc is not None and proc.poll() is None:
                proc.kill()
    for name, (code, out) in outputs.items():
        assert code == 0, f"{name} exited {code}: {out[-2000:]}"
    result = audit(queue)
    assert result.clean and result.done == 400 and result.completed_twice == 0, result.summary()
    done_by = {t.split("-")[-2] for t in _workers_of(queue)}  # the pid part of <host>-<pid>-<n>
    assert len(done_by) == 3, f"expected tasks done by all three worker processes, got {done_by}"
    assert "Stopping (SIGTERM): workers finish the task in hand" in early_out
    assert outputs["listener"][1].count("Received finished message from worker") >= 3
    assert "Progress: " in outputs["listener"][1]
    queue.purge()


@pytest.mark.real_redis
@pytest.mark.slow
def test_redis_cluster_profile_nodes_and_init_form_a_cluster_that_is_ok(tmp_path):
    """The redis-cluster profile natively: each node's command and healthcheck on a free port instead of
    700N, bound to loopback, in a directory of its own (the image's /data); then the init's command."""
    ports = _free_cluster_ports(len(REDIS_NODES))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for (name, compose_port), port in zip(REDIS_NODES.items(), ports, strict=True):
            workdir = tmp_path / name
            workdir.mkdir()
            command = [str(port) if arg == compose_port else arg for arg in SERVICES[name]["command"]]
            nodes.append(
                subprocess.Popen(
                    [
                        shutil.which(command[0]) or command[0],
                        *command[1:],
                        "--bind",
                        "127.0.0.1",
                        "--logfile",
                        "node.log",
                    ],
                    cwd=workdir,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            )
            health = [str(port) if arg == compose_port else arg for arg in SERVICES[name]["healthcheck"]["test"][1:]]
            assert wait_until(lambda h=health: _output(h) == "PONG", 20), (workdir / "node.log").read_text()[-2000:]
        local = dict(zip(REDIS_NODES.items(), ports, strict=True))  # (service, compose port) -> free port
        addresses = {f"{name}:{compose_port}": f"127.0.0.1:{port}" for (name, compose_port), port in local.items()}
        init = [addresses.get(arg, arg) for arg in SERVICES["redis-cluster-init"]["command"]]
        created = subprocess.run(init, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr
        assert "[OK] All 16384 slots covered." in created.stdout

        def state(port: int) -> str:
            info = _output(["redis-cli", "-p", str(port), "cluster", "info"])
            return dict(line.split(":", 1) for line in info.splitlines() if ":" in line).get("cluster_state", "")

        assert wait_until(lambda: all(state(port) == "ok" for port in ports), 30)
        for port in ports:
            assert _output(["redis-cli", "-p", str(port), "config", "get", "appendonly"]).split() == [
                "appendonly",
                "yes",
            ]
        again = subprocess.run(init, capture_output=True, text=True, timeout=60)  # what the comment promises
        assert again.returncode != 0 and "is not empty" in again.stdout, again.stdout[-2000:]
        assert all(state(port) == "ok" for port in ports)
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(10)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def _free_cluster_ports(count: int) -> list[int]:
    """Free loopback ports whose cluster bus port (port + 10000, as the services leave it) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port + 10000 > 65535 or port in ports or port + 10000 in ports:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        ports.append(port)
    return ports


def _output(command: list[str]) -> str:
    """What redis-cli printed, stripped; "" if it failed (the node is not up yet)."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=10)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _workers_of(queue: Queue) -> list[str]:
    return [lease.rsplit("#", 1)[0] for _, (lease,) in queue.iter_task_hashes(("lease",)) if lease]


@pytest.mark.real_redis
def test_a_worker_stopped_by_sigterm_finishes_the_task_in_hand_and_hands_back_the_rest(redis_url, queue_name):
    queue = Queue(connect(redis_url), queue_name)
    from wqsim import generate

    generate(queue, 6, duration_ms=400)
    proc = subprocess.Popen(
        [str(BIN / "wqsim"), "work", "--queue", queue_name, "--workers", "1", "--batch-size", "3"],
        env={**os.environ, "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_until(lambda: any(s.value == "running" for s in queue.statuses().values()), 20)
        time.sleep(0.1)  # mid-task
        code, out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out
    statuses = [s.value for s in queue.statuses().values()]
    assert "running" not in statuses and statuses.count("done") >= 1  # the task in hand was finished
    assert statuses.count("queued") >= 1  # unstarted tasks were handed back, at once, not left to the reaper
    result = audit(queue)
    assert result.lost == 0 and result.running == 0 and result.completed_twice == 0
    queue.purge()


@pytest.mark.real_redis
def test_worker_service_imports_the_example_module_and_runs_its_kind(redis_url, queue_name):
    """The cluster's worker names a handler module with --import: its kind runs in the service."""
    command = SERVICES["worker"]["command"]
    assert command[command.index("--import") + 1] == "wqsim.example_tasks"
    queue = Queue(connect(redis_url), queue_name)
    ids = queue.allocate_ids(3)
    queue.enqueue(make_tasks(ids, kind="checksum", payload={"text": "wqsim", "rounds": 2}))
    worker = start("worker", redis_url, "--once", "--queue", queue_name)  # --once: exits once drained
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out
    expected = hashlib.sha256(hashlib.sha256(b"wqsim").digest()).hexdigest()
    assert [queue.task(i).result for i in ids] == [{"sha256": expected, "rounds": 2}] * 3


def test_lab_service_serves_jupyterlab_that_refuses_requests_without_the_token(tmp_path):
    port = free_port()
    token = "wqsim-test-token"
    command = [arg.replace("/app/notebooks", str(ROOT / "notebooks")) for arg in service_command("lab")]
    command = [re.sub(r"^--port=\d+$", f"--port={port}", arg) for arg in command]
    command = [re.sub(r"^--ip=0\.0\.0\.0$", "--ip=127.0.0.1", arg) for arg in command]  # no need to listen wider here
    if os.geteuid() == 0:  # the image runs it as a non-root user; this machine's CI runs as root
        command.append("--allow-root")
    env = {
        **service_env("lab", "redis://127.0.0.1:1/0"),
        "JUPYTER_TOKEN": token,
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
    }
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def status(headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/api/status", headers=headers), timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    try:
        answered = wait_until(
            lambda: status({"Authorization": f"token {token}"}) == 200 or proc.poll() is not None, 60, interval_s=0.2
        )
        assert answered and proc.poll() is None, f"lab never answered: {stop(proc)[1][-3000:]}"
        assert status({}) == 403
        assert status({"Authorization": "token wrong"}) == 403
    finally:
        if proc.poll() is None:
            stop(proc)


# -- the other ways in: conda and the image -----------------------------------------------

PYPI_TO_CONDA = {"redis": "redis-py"}
EXTRA_PACKAGES = {"hiredis": "hiredis", "lua": "lupa"}  # redis[hiredis], fakeredis[lua]
CONDA_ONLY = {"python", "pip", "redis-server"}  # the interpreter, the installer and the server binary


def _requirement(text: str) -> tuple[str, list[str], str]:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[([^\]]+)\])?\s*(.*)", text.strip())
    assert match, text
    return match.group(1).lower(), (match.group(2) or "").split(",") if match.group(2) else [], match.group(3)


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted: dict[str, str] = {}
    for text in (
        project["dependencies"]
        + project["optional-dependencies"]["test"]
        + project["optional-dependencies"]["notebook"]
        + project["optional-dependencies"]["dev"]
    ):
        name, extras, version = _requirement(text)
        wanted[PYPI_TO_CONDA.get(name, name)] = version
        for extra in extras:
            wanted[EXTRA_PACKAGES[extra]] = ""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    have: dict[str, str] = {}
    pip_section: list[str] = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section = dep["pip"]
            continue
        name, _, version = _requirement(dep.split("=")[0] if "=" in dep and ">=" not in dep else dep)
        have[name] = version
    assert {n: v for n, v in have.items() if n not in CONDA_ONLY} == wanted
    assert pip_section == ["-e ."]


def test_dockerfile_installs_this_package_with_its_notebook_extra_as_a_non_root_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert 'RUN pip install ".[notebook]"' in dockerfile
    assert "COPY pyproject.toml" in dockerfile and "COPY wqsim ./wqsim" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert "notebook" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
