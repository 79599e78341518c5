"""`make bench ARGS="--compare REV"`: an earlier commit's wqsim measured beside this tree's.

The comparison's figures take minutes and are not run here; what is tested is
that it measures what it says: the commit's own files, in a process of its own,
and a verdict that reads each figure the right way round.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import compare

ROOT = Path(__file__).parent.parent


def test_the_tree_at_a_commit_holds_that_commits_files_and_is_removed_afterwards():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    with compare.tree_at(head.stdout.strip()) as tree:
        committed = subprocess.run(
            ["git", "-C", str(ROOT), "show", "HEAD:wqsim/__init__.py"], capture_output=True, text=True, check=True
        )
        assert (tree / "wqsim" / "__init__.py").read_text() == committed.stdout
        assert (tree / "benchmarks" / "wqsim_bench.py").exists()
    assert not tree.exists()


def test_an_unknown_commit_is_one_clear_line():
    with pytest.raises(SystemExit, match="compare: cannot read commit 'no-such-rev'"), compare.tree_at("no-such-rev"):
        pass


@pytest.mark.real_redis
def test_a_probe_measures_the_tree_it_was_given(redis_url):
    measure = compare.Measure("tiny", ("throughput", "200", "10"), "tasks/s")
    with compare.tree_at("HEAD") as tree:
        probe = compare.Probe(tree, redis_url)
        try:
            assert probe.measure(measure) > 0
            assert probe.measure(measure) > 0  # the same process answers again
        finally:
            probe.close()
        assert probe.process.returncode == 0


def test_the_verdict_reads_throughput_up_and_latency_down():
    figures = {m.label: {"before": [100.0, 100.0, 100.0], "after": [94.0, 94.0, 94.0]} for m in compare.MEASURES}
    lines = compare.report("REV", figures).splitlines()
    verdicts = {m.label: next(line for line in lines if line.startswith(m.label)).split()[-1] for m in compare.MEASURES}
    # 6 % less throughput is a regression; 6 % less pick-up latency is an improvement.
    assert verdicts == {"batch 1, 1 worker": "NO", "batch 100, 1 worker": "NO", "idle pickup p99": "yes"}
