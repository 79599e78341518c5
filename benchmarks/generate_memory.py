"""Peak memory of ``generate`` for a huge count: it streams in chunks, so RSS stays flat.

    python -m benchmarks.generate_memory [COUNT] [CHUNK]     (default: 10,000,000 tasks)

Starts its own redis-server (never touches one it did not start), generates
COUNT no-op tasks in a child process and prints that child's peak RSS, the
time taken and Redis's memory. The test suite checks 1,000,000 (tests/test_inputs.py).
"""

from __future__ import annotations

import subprocess
import sys
import time

from wqsim import RedisServer, connect
from wqsim.generator import GENERATE_CHUNK

CHILD = """
import sys
from wqsim import Queue, connect, generate
generate(Queue(connect(sys.argv[1]), "bench-generate"), int(sys.argv[2]), kind="noop", chunk=int(sys.argv[3]))
# VmHWM, not ru_maxrss: Linux carries a parent's peak into its children
print(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')))
"""


def main(count: int = 10_000_000, chunk: int = GENERATE_CHUNK) -> None:
    with RedisServer() as server:
        began = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-c", CHILD, server.url, str(count), str(chunk)],
            check=True,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - began
        peak_mb = int(child.stdout.split()[-1]) / 1024
        used_mb = connect(server.url).info("memory")["used_memory"] / 2**20
    print(
        f"generate {count:,} no-op tasks in chunks of {chunk:,}: peak RSS {peak_mb:.0f} MB, "
        f"{elapsed:.1f} s ({count / elapsed:,.0f} tasks/s); Redis used_memory {used_mb:,.0f} MB"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
