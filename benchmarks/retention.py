"""Redis memory under retention: 1,000,000 no-op tasks through a queue, memory read as they go.

    python -m benchmarks.retention [--tasks 1000000] [--workers 2] [--batch 100] [--keep-everything]

Starts its own redis-server, a pool of worker processes (batch claims) and
enqueues no-op tasks in chunks, never more than ``--backlog`` ahead of the
workers (a producer that outruns its workers grows the queue, not the history).
At 0, 25 %, 50 %, 75 % and 100 % of the tasks, once every task enqueued so far
is done, it prints INFO memory's used_memory, the number of keys, the events
stream's length and the done tasks kept. With the default retention policy
(the newest 10,000 done tasks, about 100,000 events) memory stays flat;
``--keep-everything`` shows what it was before retention.
"""

from __future__ import annotations

import argparse
import time

from wqsim import Queue, RedisServer, Retention, WorkerConfig, WorkerPool, connect, generate

CHUNK = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--backlog", type=int, default=50_000, help="most tasks enqueued ahead of the workers")
    parser.add_argument("--keep-everything", action="store_true", help="no retention, as before it existed")
    args = parser.parse_args()
    checkpoints = [args.tasks * k // 4 for k in (1, 2, 3, 4)]

    with RedisServer() as server:
        client = connect(server.url)
        queue = Queue(client, "retention")
        queue.set_retention(Retention.keep_everything() if args.keep_everything else Retention())
        print(
            f"redis-server {client.info('server')['redis_version']}, {args.workers} worker processes, "
            f"batch {args.batch}; retention: {queue.retention().describe()}"
        )
        print(f"{'tasks done':>12} {'used_memory':>14} {'keys':>9} {'events':>9} {'done kept':>10} {'elapsed':>9}")
        config = WorkerConfig(batch_size=args.batch, exit_when_drained=False, lease_s=60)
        pool = WorkerPool(server.url, queue.name, [f"r{i}" for i in range(1, args.workers + 1)], config).start()
        started = time.perf_counter()

        def report(done: int) -> None:
            used = int(client.info("memory")["used_memory"])
            print(
                f"{done:>12,} {used:>14,} {client.dbsize():>9,} {client.xlen(queue.keys.events):>9,} "
                f"{client.zcard(queue.keys.done_index):>10,} {time.perf_counter() - started:>8.1f}s",
                flush=True,
            )

        def done() -> int:
            return int(client.hget(queue.keys.stats, "done") or 0)

        try:
            report(0)
            enqueued = 0
            for checkpoint in checkpoints:
                while enqueued < checkpoint:
                    while enqueued - done() >= args.backlog:  # let the workers catch up
                        time.sleep(0.02)
                    n = min(CHUNK, checkpoint - enqueued)
                    generate(queue, n, kind="noop")
                    enqueued += n
                while done() < checkpoint:
                    time.sleep(0.02)
                report(checkpoint)
        finally:
            pool.stop()
            pool.join(30)
        rate = args.tasks / (time.perf_counter() - started)
        print(f"{args.tasks:,} tasks at {rate:,.0f} tasks/s; stats: {queue.counters()}")


if __name__ == "__main__":
    main()
