"""Check the peer adapters by hand: throughput for n=2000 and idle pickup latency.

    PYTHONPATH=. python benchmarks/try_peers.py [n]

Starts its own redis-server (never the one on 6379) and prints one line per
measurement, then the keys left behind (should be 0).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import redis

from benchmarks import peers
from wqsim import RedisServer


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    began = time.monotonic()
    with RedisServer() as server:
        url = server.url
        print(f"redis {url}, n={n}")
        runs = [
            ("rq SimpleWorker", lambda: peers.rq_throughput(url, n)),
            ("celery solo", lambda: peers.celery_throughput(url, n)),
            ("huey 1 thread", lambda: peers.huey_throughput(url, n)),
            ("raw BLMOVE+LREM", lambda: peers.raw_throughput(url, n)),
            ("raw Lua batch=100", lambda: peers.raw_throughput(url, n * 10, batch=100)),
        ]
        for name, run in runs:
            t = time.monotonic()
            rate = run()
            print(f"throughput  {name:<18} {rate:>10,.0f} tasks/s   ({time.monotonic() - t:4.1f} s)")
        # RQ's per-job service time (~2-4 ms here) and Celery's under load reach the
        # default 3 ms spacing, so they can build a backlog that the p50/p99 then
        # measure; the 20 ms lines show their pickup when truly idle.
        latency_runs = [(system, 0.003) for system in peers.SYSTEMS] + [("rq", 0.020), ("celery", 0.020)]
        for system, spacing in latency_runs:
            t = time.monotonic()
            samples = peers.latency_samples(system, url, count=300, spacing_s=spacing)
            q = peers.quantiles(samples)
            label = f"{system} @{spacing * 1e3:g} ms"
            print(
                f"latency     {label:<18} p50 {q['p50'] * 1e3:7.2f} ms  p99 {q['p99'] * 1e3:7.2f} ms"
                f"  (n={len(samples)}, {time.monotonic() - t:4.1f} s)"
            )
        client = redis.Redis.from_url(url)
        leftover = client.dbsize()
        client.close()
    threads = [repr(t) for t in threading.enumerate() if t is not threading.main_thread()]
    print(f"keys left {leftover}, threads left {threads}, total {time.monotonic() - began:.1f} s")
    return 0 if leftover == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
