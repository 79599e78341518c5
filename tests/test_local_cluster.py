"""wqsim.local_cluster: a real Redis Cluster from the redis-server binary, and its faults.

Real processes only. One 3-master cluster and one 3-master, 3-replica cluster per
module (creating one takes seconds); the tests that stop a cluster start their own.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import wait_until
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from wqsim import ClusterNode, LocalCluster

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

ROOT = Path(__file__).parent.parent
KEYS = ["a", "b", "c", "task:1", "task:2", "wqsim:{seed}:ready", "wqsim:{seed}:task:7", "{x}y", "\u00e9t\u00e9"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as c:
        yield c


@pytest.fixture(scope="module")
def replicated() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3, replicas=1) as c:
        yield c


@contextlib.contextmanager
def client_of(node: ClusterNode) -> Iterator[redis.Redis]:
    """A plain connection to one node, which fails at once when the node is down."""
    client = redis.Redis(
        host=node.host, port=node.port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0), decode_responses=True
    )
    try:
        yield client
    finally:
        client.close()


def cluster_info(node: ClusterNode) -> dict[str, str]:
    with client_of(node) as client:
        text = client.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def pids_and_dirs(cluster: LocalCluster) -> list[tuple[int, str]]:
    """Each node's process id and directory, as the node itself reports them."""
    found = []
    for node in cluster.nodes:
        with client_of(node) as client:
            found.append((int(client.info("server")["process_id"]), client.config_get("dir")["dir"]))
    return found


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped by its parent


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wqsim.local_cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )


def start_module(*args: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m wqsim.local_cluster`` in the background, and the status line it printed once up."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wqsim.local_cluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def status_url(line: str) -> str:
    match = re.fullmatch(r"Redis Cluster up: (redis://127\.0\.0\.1:\d+/0) \(3 masters, 0 replicas\)", line)
    assert match, line
    return match.group(1)


# -- a healthy cluster ---------------------------------------------------------------------


def test_cluster_is_ok_on_every_node_with_every_slot_assigned(cluster):
    nodes = cluster.nodes
    assert len(nodes) == 3 and len({n.port for n in nodes}) == 3
    assert all(n.host == "127.0.0.1" and n.port != 6379 for n in nodes)
    assert cluster.url == f"redis://127.0.0.1:{nodes[0].port}/0"
    assert nodes[0].address == f"127.0.0.1:{nodes[0].port}"
    for node in nodes:
        info = cluster_info(node)
        assert info["cluster_state"] == "ok" and info["cluster_slots_assigned"] == "16384", (node, info)
        assert info["cluster_known_nodes"] == "3"
    assert sorted(cluster.masters_now(), key=nodes.index) == nodes
    assert all(cluster.replicas_of(n) == [] for n in nodes)
    owners = {cluster.node_for_slot(slot) for slot in (0, 5000, 10000, 16383)}
    assert owners == set(nodes)  # redis-cli splits the slots into three ranges, one per master


def test_node_for_key_is_where_redis_cluster_sends_the_key(cluster):
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        for key in KEYS:
            rc.set(key, f"value of {key}")
            owner = cluster.node_for_key(key)
            assert rc.get_node_from_key(key).port == owner.port, key
            with client_of(owner) as client:  # a plain client: the owner answers without a MOVED
                assert client.get(key) == f"value of {key}", key
        assert cluster.node_for_key("wqsim:{seed}:ready") == cluster.node_for_key("wqsim:{seed}:task:7")
        rc.delete(*KEYS[:1])
    finally:
        rc.close()
    assert cluster.node_for_key("a") == cluster.node_for_slot(key_slot(b"a"))


def test_node_for_slot_refuses_a_slot_outside_the_cluster(cluster):
    with pytest.raises(ValueError, match="slot must be between 0 and 16383"):
        cluster.node_for_slot(16384)


def test_a_killed_master_without_replicas_fails_the_cluster_until_it_is_restarted(cluster):
    master = cluster.node_for_key("task:1")
    others = [n for n in cluster.nodes if n != master]
    cluster.kill(master)
    try:
        assert master not in cluster.masters_now()
        # Past cluster-node-timeout, the two other masters agree it has failed: its slots have no
        # owner that answers, so the whole cluster refuses requests.
        assert wait_until(lambda: all(cluster_info(n)["cluster_state"] == "fail" for n in others), 15)
        with pytest.raises(redis.ConnectionError), client_of(master) as client:
            client.ping()
    finally:
        with contextlib.suppress(RuntimeError):  # already running again if a step above failed late
            cluster.restart(master)
    cluster.wait_ok(30)
    assert sorted(cluster.masters_now(), key=cluster.nodes.index) == cluster.nodes
    assert cluster.node_for_key("task:1") == master
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    try:
        assert rc.set("task:1", "again") and rc.get("task:1") == "again"
    finally:
        rc.close()


# -- with replicas -------------------------------------------------------------------------


def test_replicated_cluster_pairs_each_master_with_one_linked_replica(replicated):
    masters = replicated.masters_now()
    assert len(replicated.nodes) == 6 and len(masters) == 3
    replicas = [r for m in masters for r in replicated.replicas_of(m)]
    assert sorted(masters + replicas, key=replicated.nodes.index) == replicated.nodes
    assert all(len(replicated.replicas_of(m)) == 1 for m in masters)
    for replica in replicas:
        with client_of(replica) as client:
            assert client.info("replication")["master_link_status"] == "up"


def test_failover_promotes_the_replica_and_demotes_its_master(replicated):
    master = replicated.node_for_key("a")
    (replica,) = replicated.replicas_of(master)
    replicated.failover(replica)
    assert replica in replicated.masters_now() and master not in replicated.masters_now()
    assert replicated.node_for_key("a") == replica
    assert wait_until(lambda: replicated.replicas_of(replica) == [master], 15)
    with pytest.raises(ValueError, match="is not a replica"):
        replicated.failover(replica)


def test_a_killed_master_is_replaced_by_its_replica_which_kept_its_writes(replicated):
    key = "wqsim:{seed}:ready"
    master = replicated.node_for_key(key)
    assert wait_until(lambda: len(replicated.replicas_of(master)) == 1, 15)
    (replica,) = replicated.replicas_of(master)
    with client_of(master) as client:
        client.rpush(key, "t1", "t2")
        assert client.wait(1, 5000) == 1  # the replica has the write before its master dies
    replicated.kill(master)
    try:
        assert wait_until(lambda: replica in replicated.masters_now(), 15)  # cluster-node-timeout is 1 s
        replicated.wait_ok(30)
        assert replicated.node_for_key(key) == replica
        with client_of(replica) as client:
            assert client.lrange(key, 0, -1) == ["t1", "t2"]
    finally:
        with contextlib.suppress(RuntimeError):
            replicated.restart(master)
    # Back with its old nodes.conf, the old master learns it was replaced and follows the new one.
    assert wait_until(lambda: replicated.replicas_of(replica) == [master], 30)
    replicated.wait_ok(30)
    assert len(replicated.masters_now()) == 3


# -- stopping --------------------------------------------------------------------------------


def test_stop_leaves_no_redis_server_and_no_directory_and_may_be_repeated():
    with LocalCluster(masters=3) as cluster:
        started = pids_and_dirs(cluster)
        assert all(os.path.isdir(d) for _, d in started)
    assert all(gone(pid) for pid, _ in started)
    assert not any(os.path.exists(d) for _, d in started)
    assert cluster.nodes == []
    cluster.stop()  # idempotent


def test_the_module_serves_until_sigterm_then_stops_the_cluster():
    proc, line = start_module("--masters", "3", "--replicas", "0")
    try:
        url = status_url(line)
        client = redis.Redis.from_url(url, decode_responses=True)
        assert cluster_info_text(client).startswith("cluster_state:ok")
        client.close()
        started = pids_and_dirs_from(url)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert all(gone(pid) for pid, _ in started)
    assert not any(os.path.exists(d) for _, d in started)


def test_the_cluster_and_its_directories_go_when_its_owner_is_killed():
    """SIGKILL leaves no time to clean up: the nodes die with their parent, and the janitors remove the directories."""
    proc, line = start_module("--masters", "3")
    try:
        started = pids_and_dirs_from(status_url(line))
    finally:
        proc.kill()
        proc.wait()
    assert wait_until(lambda: all(gone(pid) for pid, _ in started), 15)
    assert wait_until(lambda: not any(os.path.exists(d) for _, d in started), 15)


def cluster_info_text(client: redis.Redis) -> str:
    return str(client.execute_command("CLUSTER", "INFO"))


def pids_and_dirs_from(url: str) -> list[tuple[int, str]]:
    """Every node's process id and directory, found through the node at ``url``."""
    with redis.Redis.from_url(url, decode_responses=True) as first:
        ports = [
            int(n.split()[1].split("@")[0].rsplit(":", 1)[1])
            for n in first.execute_command("CLUSTER", "NODES").splitlines()
        ]
    found = []
    for port in ports:
        with client_of(ClusterNode("127.0.0.1", port)) as client:
            found.append((int(client.info("server")["process_id"]), client.config_get("dir")["dir"]))
    return found


# -- the command line's errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--masters", "2"], "masters must be an integer >= 3 (got 2)"),
        (["--masters", "three"], "argument --masters: invalid int value: 'three'"),
        (["--replicas", "-1"], "replicas must be an integer >= 0"),
        (["--shards", "3"], "unrecognized arguments: --shards 3"),
    ],
)
def test_the_module_refuses_bad_arguments_in_one_line_with_exit_code_2(args, message):
    proc = run_module(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("wqsim.local_cluster: error: "), proc.stderr
    assert message in proc.stderr


def test_the_module_without_redis_server_exits_3_in_one_line(tmp_path):
    proc = run_module(env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "redis-server not found on PATH" in proc.stderr, proc.stderr


def test_a_cluster_needs_three_masters():
    with pytest.raises(ValueError, match=r"masters must be an integer >= 3 \(got 2\)"):
        LocalCluster(masters=2)
