"""An early pytest plugin (``-p tests.pytest_bytecode`` in pyproject's addopts): the test run caches
bytecode, even where the environment says not to.

Machines here set PYTHONDONTWRITEBYTECODE=1, so nothing outside site-packages (compiled when pip
installed it) keeps its bytecode: every process compiles what it imports from source again. A test
run starts hundreds of Python processes that import this checkout (``wqsim`` commands, worker pools,
notebook kernels, JupyterLab), and each pytest process rewrites the asserts of every test module
it collects. Measured here: ``import wqsim.cli`` takes 0.32 s of CPU without cached bytecode and
0.22 s with it; collecting the suite in one pytest process, 4.1 s of CPU without and 2.8-3.3 s with.

So the test run writes ``__pycache__`` (ignored by git) and lets its child processes do the same:
``sys.dont_write_bytecode`` for this process (pytest's assertion rewriter checks it too), the
environment variable for the processes it starts. Writes are atomic (a temporary file renamed), so
processes compiling the same module at once are safe.
"""

from __future__ import annotations

import os
import sys

sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
