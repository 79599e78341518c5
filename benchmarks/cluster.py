"""Redis Cluster: the same no-op workload on one server, and on 1, 3 and 6 shards over a 3-master cluster.

``python -m benchmarks --cluster`` (``make bench ARGS=--cluster``). For each
layout: throughput (tasks done / makespan) with the worker processes this
machine can run, and each node's server time per task (``INFO commandstats``:
the microseconds Redis spent in commands, over the tasks done). One queue is
one slot on one master: its single thread is the ceiling. Shards spread the
work over masters, until the client side (the worker processes, on the same
two cores here) becomes the ceiling instead.

Then the simulation, calibrated on each master of the same cluster
(``wqsim.sim.cluster``): first the one layout it can check here, one shard on
this machine's cores, beside its measured row; then 1, 3, 10 and 50 masters
with workers on hosts of their own, where what grows with the masters is the
cluster bus (every PUBLISH forwarded to every other node). Writes
benchmarks/results/cluster.json.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import redis

from wqsim import LocalCluster, RedisServer, RunConfig, WorkerConfig, run
from wqsim.retention import Retention
from wqsim.sim import simulate
from wqsim.sim.cluster import ClusterProfile, calibrate_nodes, predict_scaling

log = logging.getLogger("benchmarks.cluster")

TASKS = 20_000
WORKERS = 3
BATCH = 10
CALIBRATION_TASKS = 500  # per master: a few seconds each
PREDICTED_NODES = (1, 3, 10, 50)
PREDICTED_WORKERS = (1, 4)  # per master: one worker is its round trips' bound, four keep a master's thread busy


def _server_usec(urls: list[str]) -> dict[str, float]:
    """Each node's total microseconds in commands so far."""
    out = {}
    for url in urls:
        client = redis.Redis.from_url(url)
        stats = client.info("commandstats")
        out[url] = float(sum(v["usec"] for v in stats.values()))
        client.close()
    return out


def measure(name: str, url: str, node_urls: list[str], shards: int, queue: str) -> dict[str, Any]:
    config = RunConfig(
        queue=queue,
        tasks=TASKS,
        kind="noop",
        workers=WORKERS,
        shards=shards,
        worker=WorkerConfig(batch_size=BATCH),
        retention=Retention(keep_done=None),  # every task's times: the makespan covers the whole run
    )
    before = _server_usec(node_urls)
    started = time.perf_counter()
    report = run(config, url=url)
    wall = time.perf_counter() - started
    after = _server_usec(node_urls)
    done = report.audit.done
    per_node = {u.rsplit(":", 1)[-1].split("/")[0]: round((after[u] - before[u]) / done, 2) for u in node_urls}
    row = {
        "layout": name,
        "shards": shards,
        "tasks_per_s": round(report.makespan_tasks_per_s),
        "wall_s": round(wall, 2),
        "server_us_per_task": per_node,
        "clean": report.audit.clean,
    }
    log.info("%s: %s", name, row)
    return row


def workload(workers: int) -> RunConfig:
    return RunConfig(tasks=TASKS, kind="noop", workers=workers, worker=WorkerConfig(batch_size=BATCH))


def predictions(nodes: ClusterProfile, one_shard: dict[str, Any]) -> dict[str, Any]:
    """The one-shard layout simulated on this machine's cores (its check), and the predicted scaling."""
    per_node = one_shard["server_us_per_task"]
    measured_node = max(per_node, key=per_node.get)  # the master the one shard's slot is on
    profile = nodes.profiles[[a.rsplit(":", 1)[-1] for a in nodes.addresses].index(measured_node)]
    check = simulate(workload(WORKERS), profile)  # the profile's cores: the machine it was measured on
    scaling = [
        {
            "nodes": p.nodes,
            "workers_per_node": p.workers_per_node,
            "tasks_per_s": round(p.tasks_per_s),
            "tasks_per_s_per_node": round(p.tasks_per_s_per_node),
            "redis_utilisation": round(p.redis_utilisation, 3),
            "bus_share": round(p.bus_share, 3),
        }
        for workers in PREDICTED_WORKERS
        for p in predict_scaling(workload(workers), nodes, PREDICTED_NODES)
    ]
    return {
        "bus_message_us": round(nodes.bus_message_s * 1e6, 3),
        "one_shard_here": {"measured": one_shard["tasks_per_s"], "simulated": round(check.makespan_tasks_per_s)},
        "scaling": scaling,
    }


def main(out: str) -> int:
    rows = []
    with RedisServer() as server:
        rows.append(measure("single server", server.url, [server.url], 1, "bench-single"))
    with LocalCluster(masters=3) as cluster:
        node_urls = [f"redis://{n.address}/0" for n in cluster.nodes]
        for shards in (1, 3, 6):
            rows.append(measure(f"cluster, {shards} shard(s)", cluster.url, node_urls, shards, f"bench-c{shards}"))
        nodes = calibrate_nodes(cluster.url, tasks=CALIBRATION_TASKS)
    predicted = predictions(nodes, rows[1])
    print(table(rows))
    print()
    print(prediction_table(predicted))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    results = {"tasks": TASKS, "workers": WORKERS, "batch": BATCH, "rows": rows, "predicted": predicted}
    Path(out).write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"No-op tasks, {TASKS:,} per run, {WORKERS} worker processes, batch {BATCH}",
        "",
        "| layout | tasks/s | Redis µs per task, by node |",
        "|---|---:|---|",
    ]
    for r in rows:
        nodes = ", ".join(f"{port}: {us}" for port, us in r["server_us_per_task"].items())
        lines.append(f"| {r['layout']} | {r['tasks_per_s']:,} | {nodes} |")
    return "\n".join(lines)


def prediction_table(predicted: dict[str, Any]) -> str:
    here = predicted["one_shard_here"]
    lines = [
        "Simulated, calibrated on each master: "
        f"one shard here {here['simulated']:,} tasks/s (measured {here['measured']:,}); "
        f"a forwarded PUBLISH costs each other master {predicted['bus_message_us']} µs",
        "",
        "| masters | workers per master | tasks/s | per master | busiest master's thread | of it, the bus |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for p in predicted["scaling"]:
        lines.append(
            f"| {p['nodes']} | {p['workers_per_node']} | {p['tasks_per_s']:,} | {p['tasks_per_s_per_node']:,} "
            f"| {p['redis_utilisation']:.0%} | {p['bus_share']:.0%} |"
        )
    return "\n".join(lines)
