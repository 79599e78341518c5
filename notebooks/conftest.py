"""The notebooks under pytest-xdist: a notebook's cells share one kernel and run in order, so all
of a notebook must go to one xdist process (and so must the browser test's notebooks, which share
one JupyterLab, and the rerun test's two tests of one notebook, which share its kernel); the other
tests go one by one, to whichever is free.

(xdist_group marks with --dist loadgroup would say the same, but xdist 3.8 groups by rewriting
item._nodeid, which pytest 9 no longer reads.) This file is loaded whenever a notebook is
collected; a run of tests/ alone uses xdist's own --dist load.
"""

from __future__ import annotations

from typing import Any

import pytest

# Test files whose tests share one expensive fixture: the browser test's JupyterLab and Chromium
# start once for every notebook, not once in each of four processes.
WHOLE_FILES = ("test_jupyterlab_browser.py",)
# Test files whose tests share an expensive fixture per parameter: test_notebooks_rerun.py's two
# tests of one notebook share its kernel, the second pass continuing the first. Split over two
# processes, the second would start a kernel of its own and make its own first pass as well.
PER_PARAMETER_FILES = ("test_notebooks_rerun.py",)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksWhole(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if path.endswith(".ipynb") or path.endswith(WHOLE_FILES):
                return path
            if path.endswith(PER_PARAMETER_FILES) and nodeid.endswith("]"):
                return path + "[" + nodeid.rsplit("[", 1)[1]  # e.g. tests/test_notebooks_rerun.py[04]
            return nodeid

    return NotebooksWhole(config, log)
