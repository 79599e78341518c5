"""Students re-run cells: every notebook must survive it, in one kernel, without a restart.

Each notebook runs in a kernel of its own against the session's redis-server
(REDIS_URL is passed to the kernel). Cells that start an experiment carry the
tag ``experiment``: such a cell starts from a clean state of its own, so it and
the cells after it (up to the next experiment: its *block*) may be run again at
any time. Two checks share one kernel per notebook, in this order:

1. every cell in order, each experiment cell run twice back to back (what a
   student does on pressing shift-enter again) before the cells that read its results;
2. then every cell in order once more, from the setup cell, no restart.

No cell may raise either time; the notebooks' own asserts (counts of one
experiment's records) make a stale queue an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

# These kernels render no images: this test reads no output, only whether a cell raised, so each
# figure's PNG (drawn by the inline backend after every cell that made one, three passes here)
# would be thrown away. IPython's image formatters are switched off by kernel config; figures are
# still made, shown and closed as ever, they display as text. nbval (the notebooks' committed
# PNG outputs) and tests/test_jupyterlab_browser.py (every figure rendered on the page) still render them.
NO_IMAGES = [f"--{kind}Formatter.enabled=False" for kind in ("PNG", "JPEG", "SVG", "PDF")]


def code_cells(nb: nbformat.NotebookNode) -> list[int]:
    return [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]


def is_experiment(cell: nbformat.NotebookNode) -> bool:
    return "experiment" in cell.get("metadata", {}).get("tags", [])


def blocks(nb: nbformat.NotebookNode) -> tuple[list[int], list[list[int]]]:
    """The code cells before the first experiment (the setup), and each experiment's block."""
    head: list[int] = []
    found: list[list[int]] = []
    for i in code_cells(nb):
        if is_experiment(nb.cells[i]):
            found.append([i])
        elif found:
            found[-1].append(i)
        else:
            head.append(i)
    return head, found


class Kernel:
    """One notebook's kernel: cells are executed by index and a failure names its pass and cell."""

    def __init__(self, path: Path, client: NotebookClient) -> None:
        self.path = path
        self.client = client
        self.nb = client.nb
        self.full_passes = 0

    def run(self, indices: list[int], what: str) -> None:
        for i in indices:
            try:
                self.client.execute_cell(self.nb.cells[i], i)
            except CellExecutionError as exc:
                pytest.fail(f"{self.path.name}, {what}: cell {i} raised\n{exc}", pytrace=False)


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.name[:2])
def kernel(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Kernel]:
    path: Path = request.param
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(path.parent)}},
        extra_arguments=NO_IMAGES,
    )
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": pythonpath}
    with client.setup_kernel(env=env):
        yield Kernel(path, client)


def test_each_experiment_cell_can_be_rerun_at_once(kernel: Kernel) -> None:
    """The first pass: each experiment cell twice in a row, as a student re-running it, then the cells after it."""
    head, found = blocks(kernel.nb)
    assert head and found, "a setup cell, then experiments tagged as such"
    kernel.run(head, "setup")
    for first, *rest in found:
        kernel.run([first], f"experiment at cell {first}")
        kernel.run([first], f"experiment at cell {first}, run again at once")
        kernel.run(rest, f"the cells after the experiment at cell {first}")
    kernel.full_passes += 1


def test_the_whole_notebook_runs_again_in_the_same_kernel(kernel: Kernel) -> None:
    """Then all cells again, top to bottom, in the kernel that already ran them: no restart."""
    while kernel.full_passes < 1:  # run on its own (-k), it makes its own first pass
        kernel.run(code_cells(kernel.nb), "first pass")
        kernel.full_passes += 1
    kernel.run(code_cells(kernel.nb), "second pass, no restart")
