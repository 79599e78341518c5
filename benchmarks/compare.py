"""Before and after, in one run: wqsim at an earlier commit against this tree.

A change to the hot path is judged by its effect on throughput and pick-up
latency. Figures taken an hour apart on a shared machine differ by more than
any such change: the same commit measured twice here gave batch-100 figures
from 76,000 to 146,000 tasks/s. So both versions run in alternate rounds
against one redis-server, under the same CPU pinning as ``python -m
benchmarks`` (the server on one CPU, clients on the others), and each figure
is judged by the median of its per-round ratios after / before: a slow
minute then slows both sides of the same round.

Each measurement runs in a fresh process that imports wqsim, and the
measuring code in ``benchmarks/wqsim_bench.py``, from the tree under test,
so the earlier commit is measured exactly as its own ``make bench`` would
measure it. Run it with ``make bench ARGS="--compare REV"``.
"""

from __future__ import annotations

import io
import json
import logging
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from wqsim import RedisServer

log = logging.getLogger("benchmarks.compare")

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 0.05  # the "within 5 %"

# Runs in a child process, one per version, for the whole comparison: the tree under test
# comes first on sys.path, so its wqsim and its benchmarks package are the ones imported (an
# editable install of this tree sits behind sys.path entries). It reads one measure per line
# and answers with one JSON number, so the two versions can alternate every second or so.
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import wqsim_bench as wb
url = sys.argv[2]
for line in sys.stdin:
    what, *args = line.split()
    if what == "pickup":
        samples = wb.pickup_latencies(url, int(args[0]))["from_call"]
        value = wb.percentiles([1000 * s for s in samples])["p99"]
    else:
        value = wb.throughput(url, int(args[0]), batch=int(args[1]))
    print(json.dumps(value), flush=True)
"""


@dataclass(frozen=True)
class Measure:
    """One figure to compare; ``higher_is_better`` says which way a change is a regression."""

    label: str
    args: tuple[str, ...]
    unit: str
    higher_is_better: bool = True


# Short measures, many rounds: the two versions are compared a second apart, before the
# machine's mood changes, and the median of many paired ratios is steady.
MEASURES = (
    Measure("batch 1, 1 worker", ("throughput", "5000", "1"), "tasks/s"),
    Measure("batch 100, 1 worker", ("throughput", "50000", "100"), "tasks/s"),
    Measure("idle pickup p99", ("pickup", "300"), "ms", higher_is_better=False),
)


@contextmanager
def tree_at(rev: str) -> Iterator[Path]:
    """The files of commit ``rev`` in a temporary directory (git archive: no worktree left behind)."""
    with tempfile.TemporaryDirectory(prefix="wqsim-compare-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", rev], capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise SystemExit(f"compare: cannot read commit {rev!r}: {archive.stderr.decode().strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, filter="data")
        yield Path(tmp)


class Probe:
    """A child process measuring one tree, answering one request at a time."""

    def __init__(self, tree: Path, url: str) -> None:
        self.tree = tree
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROBE, str(tree), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(self, measure: Measure) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(measure.args) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise SystemExit(f"compare: {measure.label} failed in {self.tree} (its error is above)")
        return float(json.loads(answer))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)


def compare(rev: str, rounds: int, url: str) -> dict[str, dict[str, list[float]]]:
    """Alternate rounds of every measure: before (``rev``) then after (this tree), then the other way."""
    figures: dict[str, dict[str, list[float]]] = {m.label: {"before": [], "after": []} for m in MEASURES}
    with tree_at(rev) as before:
        probes = {"before": Probe(before, url), "after": Probe(REPO, url)}
        try:
            for round_no in range(rounds):
                order = ("before", "after") if round_no % 2 == 0 else ("after", "before")
                for measure in MEASURES:
                    for side in order:
                        figures[measure.label][side].append(probes[side].measure(measure))
                log.info("round %d of %d done", round_no + 1, rounds)
        finally:
            for probe in probes.values():
                probe.close()
    return figures


def report(rev: str, figures: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        f"Before ({rev}) and after (this tree), {len(next(iter(figures.values()))['before'])} alternate rounds;",
        "ratio: median of the rounds' after / before",
        "",
        f"{'':32} {'before':>10} {'after':>10} {'ratio':>7}   within {TOLERANCE:.0%}",
    ]
    for m in MEASURES:
        before, after = figures[m.label]["before"], figures[m.label]["after"]
        ratio = statistics.median(a / b for a, b in zip(after, before, strict=True))
        worse = (1 - ratio) if m.higher_is_better else (ratio - 1)
        verdict = "yes" if worse <= TOLERANCE else "NO"
        fmt = "{:>10,.0f}" if m.unit == "tasks/s" else "{:>10.3f}"
        lines.append(
            f"{m.label + ' (' + m.unit + ')':32} {fmt.format(statistics.median(before))} "
            f"{fmt.format(statistics.median(after))} {ratio:>7.3f}   {verdict}"
        )
        shown = "{:,.0f}" if m.unit == "tasks/s" else "{:.3f}"
        for side, values in (("before", before), ("after", after)):
            lines.append(f"    {side:>6}: {', '.join(shown.format(v) for v in values)}")
    return "\n".join(lines)


def main(rev: str, rounds: int, pin: Callable[[int], str]) -> int:
    """Run the comparison on a redis-server of its own; ``pin`` is run.pin_cpus."""
    with RedisServer() as server:
        assert server.process is not None
        log.info("pinning: %s", pin(server.process.pid))
        figures = compare(rev, rounds, server.url)
    print(report(rev, figures))
    return 0
