"""wqsim on a real local Redis Cluster: routing, sharded runs under the chaos killer, failovers, lost masters.

Every cluster here is started from the redis-server binary by wqsim.LocalCluster
(about 2 s) on free loopback ports, and stopped with its module.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis
from helpers import make_certificates, running, wait_until

from wqsim import (
    ChaosConfig,
    ClusterNode,
    Killer,
    LocalCluster,
    Queue,
    Reaper,
    RunConfig,
    WorkerConfig,
    WorkerPool,
    connect,
    generate,
    run,
)
from wqsim.audit import audit
from wqsim.cluster import SlotSSLConnection
from wqsim.connection import RedisUnavailable
from wqsim.keys import Keys, shard_name
from wqsim.local_cluster import TlsFiles
from wqsim.server import free_port
from wqsim.shards import ShardedQueue

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

WORKER_IDS = ["1", "2", "3"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(masters=3) as started:
        yield started


def port_of(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.connection_pool.connection_kwargs["port"])


def kill_once_working(cl: LocalCluster, node: ClusterNode, shard: Queue) -> threading.Event:
    """Kill ``node`` from a thread once ``shard`` has done a few tasks; the event is set once it is killed."""
    killed = threading.Event()

    def kill() -> None:
        if wait_until(lambda: shard.counters().get("done", 0) > 5, 30, interval_s=0.02):
            cl.kill(node)
            killed.set()

    threading.Thread(target=kill, daemon=True).start()
    return killed


def test_a_queue_is_served_by_the_master_of_its_slot_whichever_node_the_url_names(cluster, queue_name):
    for node in cluster.nodes:
        url = f"redis://{node.address}/0"
        client = connect(url, queue=queue_name)
        owner = cluster.node_for_key(f"wqsim:{{{queue_name}}}:ready")
        assert port_of(client) == owner.port
        assert client.set(f"wqsim:{{{queue_name}}}:probe", "1")  # a write in the queue's slot: no MOVED
        client.delete(f"wqsim:{{{queue_name}}}:probe")


def test_a_sharded_run_under_the_chaos_killer_ends_with_a_clean_audit_on_every_shard(cluster, queue_name, capsys):
    n, shards = 1500, 6
    sq = ShardedQueue.connect(cluster.url, queue_name, shards)
    assert len({port_of(q.client) for q in sq}) >= 2  # the shards really span masters
    generate(sq, n, duration_ms=4, max_attempts=20)
    reapers = [Reaper(q, interval_s=0.05).start() for q in ShardedQueue.connect(cluster.url, queue_name, shards)]
    pool = WorkerPool(cluster.url, queue_name, WORKER_IDS, WorkerConfig(lease_s=0.3, idle_wait_s=0.05), shards=shards)
    killer = Killer(pool, 7, until=sq.drained, kills=10**6, pause_s=(0.1, 0.3))
    with running(pool, *reapers):
        killer.start()
        assert wait_until(sq.drained, timeout_s=120, interval_s=0.05), sq.audit().summary()
        killer.stop()
        assert pool.join(30), f"workers still running: {pool.exit_codes()}"
    result = sq.audit(expected=n)
    with capsys.disabled():
        print(f"\ncluster, {shards} shards: {len(killer.kills)} SIGKILLs; {result.summary()}")
    assert len(killer.kills) >= 3, "the killer barely ran"
    assert result.clean and (result.total.done, result.total.lost, result.total.completed_twice) == (n, 0, 0)
    assert all(a.done > 0 and a.clean for a in result.shards)
    sq.purge()


def a_master_killed_mid_run_fails_over_and_the_run_completes(cl: LocalCluster, queue_name: str) -> None:
    """A 6-shard run on ``cl`` (with a replica per master), one of whose masters is killed once it works."""
    sq = ShardedQueue.connect(cl.url, queue_name, 6)
    # A master other than the URL's node: a worker process that starts (or restarts) connects there first.
    shard = next(q for q in sq if port_of(q.client) != cl.nodes[0].port)
    victim = cl.node_for_key(shard.keys.ready)
    killed = kill_once_working(cl, victim, shard)
    report = run(RunConfig(queue=queue_name, tasks=600, duration_ms=10, workers=3, shards=6, timeout_s=120), url=cl.url)
    assert killed.is_set(), "the master was never killed"
    assert cl.node_for_key(shard.keys.ready) != victim  # its replica serves the slot now
    # Replication is asynchronous: a write acknowledged just before the kill may be lost with the
    # master. The audit then says exactly what went (lost ids); here nothing did, or it is counted.
    a = report.audit
    assert (a.generated, a.completed_twice) == (600, 0), a.summary()
    assert a.done + a.lost == 600 and len(a.lost_ids) == a.lost
    assert sorted(report.listen.finished) == WORKER_IDS


def test_a_killed_master_with_a_replica_fails_over_and_the_run_completes(queue_name):
    with LocalCluster(masters=3, replicas=1) as cl:
        a_master_killed_mid_run_fails_over_and_the_run_completes(cl, queue_name)


def test_shards_landing_on_fewer_masters_than_they_could_are_warned_of_in_one_line(cluster, queue_name):
    def masters_of_shards(name: str) -> int:
        return len({cluster.node_for_key(Keys(shard_name(name, i)).ready) for i in range(3)})

    names = (f"{queue_name}-{i}" for i in range(1000))
    uneven = next(n for n in names if masters_of_shards(n) < 3)
    even = next(n for n in names if masters_of_shards(n) == 3)
    assert ShardedQueue.connect(cluster.url, even, 3).placement_warning() is None
    warning = ShardedQueue.connect(cluster.url, uneven, 3).placement_warning()
    assert warning is not None
    assert f"its 3 shards land on {masters_of_shards(uneven)} of the cluster's 3 masters" in warning
    made = subprocess.run(
        [sys.executable, "-m", "wqsim", "generate", "--redis-url", cluster.url, "--queue", uneven, "--shards", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0 and warning in made.stderr, made.stderr
    status = subprocess.run(
        [sys.executable, "-m", "wqsim", "status", "--redis-url", cluster.url, "--queue", uneven, "--shards", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    for i in range(3):  # each shard, with the master serving it
        master = cluster.node_for_key(Keys(shard_name(uneven, i)).ready)
        assert f"shard '{uneven}:{i}' on {master.address}" in status.stdout
    ShardedQueue.connect(cluster.url, uneven, 3).purge()


def test_a_list_of_startup_nodes_reaches_the_cluster_when_the_first_one_is_down(cluster, queue_name):
    dead = f"127.0.0.1:{free_port()}"
    url = cluster.startup_url.replace("redis://", f"redis://{dead},", 1)
    client = connect(url, queue=queue_name, attempts=1)
    assert port_of(client) == cluster.node_for_key(Queue(client, queue_name).keys.ready).port
    assert client.ping()


def test_workers_restarted_after_the_first_startup_node_died_connect_through_the_next_and_the_run_completes(
    queue_name,
):
    with LocalCluster(masters=3, replicas=1) as cl:
        sq = ShardedQueue.connect(cl.url, queue_name, 6)
        shard = sq.queues[0]
        first = cl.node_for_key(shard.keys.ready)  # a master: its replica takes its slots over
        url = "redis://" + ",".join([first.address, *(n.address for n in cl.nodes if n != first)]) + "/0"
        killed = kill_once_working(cl, first, shard)
        # Chaos crashes keep restarting worker processes, after the kill too: each new one connects
        # through the list, whose first node is dead.
        config = RunConfig(
            queue=queue_name,
            tasks=600,
            duration_ms=5,
            workers=3,
            shards=6,
            timeout_s=120,
            chaos=ChaosConfig(seed=5, crash_p=0.02),
            max_attempts=20,  # leases on the dead master expire while its replica takes over: more attempts
            worker=WorkerConfig(lease_s=0.5),
        )
        report = run(config, url=url)
        assert killed.is_set(), "the first startup node was never killed"
        assert report.restarts > 0
        a = report.audit
        assert (a.generated, a.dead, a.completed_twice) == (600, 0, 0), a.summary()
        assert a.done + a.lost == 600 and len(a.lost_ids) == a.lost  # a failover may lose what it says


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    d = make_certificates(tmp_path_factory.mktemp("cluster-tls"))
    return TlsFiles(cert_file=str(d / "server.pem"), key_file=str(d / "server.key"), ca_file=str(d / "ca.pem"))


def test_a_tls_cluster_fails_over_and_the_run_completes_over_tls_throughout(queue_name, tls_files):
    with LocalCluster(masters=3, replicas=1, tls=tls_files) as cl:
        assert cl.url.startswith("rediss://")
        sq = ShardedQueue.connect(cl.url, queue_name, 6)
        assert all(isinstance(q.client.connection_pool.get_connection(), SlotSSLConnection) for q in sq)
        a_master_killed_mid_run_fails_over_and_the_run_completes(cl, queue_name)


def test_a_master_lost_without_a_replica_stops_only_its_shards_and_the_error_names_it(queue_name):
    with LocalCluster(masters=3, full_coverage=False) as cl:
        sq = ShardedQueue.connect(cl.url, queue_name, 6)
        shard = next(q for q in sq if port_of(q.client) != cl.nodes[0].port)  # not the URL's node (see above)
        victim = cl.node_for_key(shard.keys.ready)
        on_victim = [q.name for q in sq if port_of(q.client) == victim.port]
        elsewhere = [q for q in sq if port_of(q.client) != victim.port]
        assert elsewhere, "every shard on one node: nothing would be left to finish"
        kill_once_working(cl, victim, shard)
        config = RunConfig(
            queue=queue_name, tasks=600, duration_ms=10, workers=3, shards=6, worker=WorkerConfig(reconnect_s=2)
        )
        with pytest.raises(RedisUnavailable) as lost:
            run(config, url=cl.url)
        message = str(lost.value)
        assert "\n" not in message and victim.address in message
        assert all(name in message for name in on_victim)
        for q in elsewhere:  # the other shards' tasks all finished
            a = audit(q)
            assert a.clean and a.done == a.generated > 0, (q.name, a.summary())


def test_wqsim_run_with_chaos_on_6_shards_of_the_cluster_exits_0_with_a_clean_audit(cluster, queue_name):
    url = cluster.url
    command = [sys.executable, "-m", "wqsim", "run", "--redis-url", url, "--queue", queue_name, "--shards", "6"]
    proc = subprocess.run(
        [*command, "--tasks", "300", "--workers", "3", "--duration-ms", "2", "--chaos", "--seed", "4", "-q"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit_line = next(line for line in proc.stderr.splitlines() if " Audit: " in line)
    assert "generated 300" in audit_line and "lost 0, completed twice 0" in audit_line
    assert "Traceback" not in proc.stderr
    ShardedQueue.connect(url, queue_name, 6).purge()


def test_the_cluster_benchmark_measures_every_layout_with_a_clean_audit(monkeypatch, tmp_path, capsys):
    from benchmarks import cluster as bench

    monkeypatch.setattr(bench, "TASKS", 600)  # the layouts and the tables, not figures to quote
    monkeypatch.setattr(bench, "CALIBRATION_TASKS", 100)
    assert bench.main(str(tmp_path / "cluster.json")) == 0
    printed = capsys.readouterr().out
    assert all(f"| {layout} |" in printed for layout in ("single server", "cluster, 3 shard(s)", "cluster, 6 shard(s)"))
    rows = json.loads((tmp_path / "cluster.json").read_text())["rows"]
    assert [r["shards"] for r in rows] == [1, 1, 3, 6] and all(r["clean"] and r["tasks_per_s"] > 0 for r in rows)
    three = rows[2]["server_us_per_task"]
    assert len(three) == 3 and all(us > 0 for us in three.values())  # three shards: every master works
    predicted = json.loads((tmp_path / "cluster.json").read_text())["predicted"]
    assert predicted["one_shard_here"]["simulated"] > 0 and predicted["bus_message_us"] > 0
    assert [(p["workers_per_node"], p["nodes"]) for p in predicted["scaling"]] == [
        (w, n) for w in bench.PREDICTED_WORKERS for n in bench.PREDICTED_NODES
    ]
    assert "| 50 | 4 |" in printed


def test_generate_and_work_with_shards_as_separate_commands_finish_every_shard(cluster, queue_name):
    def wqsim(*args: str) -> subprocess.CompletedProcess[str]:
        base = [
            sys.executable,
            "-m",
            "wqsim",
            *args,
            "--redis-url",
            cluster.url,
            "--queue",
            queue_name,
            "--shards",
            "4",
        ]
        return subprocess.run(base, capture_output=True, text=True, timeout=120)

    made = wqsim("generate", "--tasks", "200", "--duration-ms", "1", "--fresh")
    assert made.returncode == 0 and "200 task(s) in 4 shards" in made.stderr, made.stderr
    worked = wqsim("work", "--workers", "2", "--once", "-q")
    assert worked.returncode == 0, worked.stderr[-2000:]
    result = ShardedQueue.connect(cluster.url, queue_name, 4).audit()
    assert result.clean and result.total.done == 200 and all(a.done > 0 for a in result.shards)
    for role in (["status"], ["reap", "--once"]):  # a shard is a queue of its own for the per-queue roles
        shard = subprocess.run(
            [sys.executable, "-m", "wqsim", *role, "--redis-url", cluster.url, "--queue", f"{queue_name}:2"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shard.returncode == 0, shard.stderr
        if role == ["status"]:
            assert f"done {result.shards[2].done}" in shard.stdout + shard.stderr
    ShardedQueue.connect(cluster.url, queue_name, 4).purge()


def test_writes_acknowledged_by_a_master_but_not_replicated_are_lost_in_its_failover_and_counted(queue_name):
    # At-least-once across a failover: replication is asynchronous, so a master acknowledges a write
    # before any replica has it. Here the replica is paused and its link cut, five tasks are enqueued
    # (the master says OK), and the master is killed: its replica, promoted, never saw them. The audit,
    # told how many tasks were created, counts them lost; WAIT is how a producer learns it in time.
    with LocalCluster(masters=3, replicas=1) as cl:
        q = Queue(connect(cl.url, queue=queue_name), queue_name)
        generate(q, 10, duration_ms=0)
        master = cl.node_for_key(q.keys.ready)
        (replica,) = cl.replicas_of(master)
        assert q.client.execute_command("WAIT", 1, 5000) == 1  # the first ten are on the replica
        cl.kill(replica, signal.SIGSTOP)  # paused: it cannot reconnect before the master dies
        redis.Redis(host=master.host, port=master.port).execute_command("CLIENT", "KILL", "TYPE", "replica")
        generate(q, 5, duration_ms=0)  # acknowledged by the master alone
        assert q.client.execute_command("WAIT", 1, 100) == 0  # what a producer asking WAIT would have learnt
        cl.kill(master)
        cl.kill(replica, signal.SIGCONT)
        assert wait_until(lambda: cl.node_for_key(q.keys.ready) == replica, 30, interval_s=0.1)
        cl.wait_ok()
        survivor = f"redis://{replica.address}/0"  # cl.url may name the killed master
        result = audit(Queue(connect(survivor, queue=queue_name), queue_name), expected=15)
        assert (result.generated, result.queued, result.lost) == (15, 10, 5), result.summary()
