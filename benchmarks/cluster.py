"""Redis Cluster: the same no-op workload on one server, and on 1, 3 and 6 shards over a 3-master cluster.

``python -m benchmarks --cluster`` (``make bench ARGS=--cluster``). For each
layout: throughput (tasks done / makespan) with the worker processes this
machine can run, and each node's server time per task (``INFO commandstats``:
the microseconds Redis spent in commands, over the tasks done). One queue is
one slot on one master: its single thread is the ceiling. Shards spread the
work over masters, until the client side (the worker processes, on the same
two cores here) becomes the ceiling instead. Writes benchmarks/results/cluster.json.
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

log = logging.getLogger("benchmarks.cluster")

TASKS = 20_000
WORKERS = 3
BATCH = 10


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


def main(out: str) -> int:
    rows = []
    with RedisServer() as server:
        rows.append(measure("single server", server.url, [server.url], 1, "bench-single"))
    with LocalCluster(masters=3) as cluster:
        node_urls = [f"redis://{n.address}/0" for n in cluster.nodes]
        for shards in (1, 3, 6):
            rows.append(measure(f"cluster, {shards} shard(s)", cluster.url, node_urls, shards, f"bench-c{shards}"))
    print(table(rows))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"tasks": TASKS, "workers": WORKERS, "batch": BATCH, "rows": rows}, indent=2))
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
