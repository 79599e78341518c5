"""What a reader sees: every notebook opened in JupyterLab in headless Chromium and run through the UI.

nbval compares the notebooks' text; this test checks the page. It starts JupyterLab (a free loopback
port, a token, no browser) on copies of the notebooks in a temporary directory, stripped of their
outputs so that everything on the page is fresh (the repo's notebooks are never touched). For each
notebook, Chromium (Debian's package, driven by Playwright) opens it, chooses Run > Run All Cells
from the menu bar, and waits until every code cell has an execution count and the kernel is idle.
Then no cell may have raised, a cell may print to stderr only where its committed output does too,
and every figure must have rendered: at least as many decoded images as the committed notebook has
PNG outputs. A screenshot of the whole notebook goes to build/screenshots/<notebook>.png, pass or fail.

JupyterLab renders an error's traceback as stderr text (both carry the stderr MIME type on the
page), so errors are read from the notebook as the UI saved it (File > Save), which names the
exception; stderr and images are read from the page.

.ci/run installs chromium with apt; without it the test fails when $CI is set, and is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from helpers import wait_until
from playwright.sync_api import BrowserContext, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SCREENSHOTS = ROOT / "build" / "screenshots"

START_TIMEOUT_S = 60  # JupyterLab answering /api/status
STARTED_TIMEOUT_S = 30  # a clicked Run All Cells marking its cells [*]
OPEN_TIMEOUT_S = 60  # the notebook on the page with its kernel idle
RUN_TIMEOUT_S = 240  # Run All Cells, to the last execution count (04-scaling, the slowest, takes ~13 s here)
IMAGES_TIMEOUT_S = 30  # the figures' data URLs decoded
POLL_MS = 200  # how often the page is asked whether the run is over: cheap on a shared 2-core machine
WIDTH, HEIGHT = 1280, 900  # the viewport; a screenshot grows it to the notebook's height
MAX_SCREENSHOT_HEIGHT = 16_000  # under Chromium's 16384-pixel limit for one capture; the notebooks are ~3000-6200

NOT_FOUND = "chromium not found: .ci/run installs it with apt"
STDERR = "application/vnd.jupyter.stderr"

log = logging.getLogger(__name__)

pytestmark = [pytest.mark.real_redis, pytest.mark.slow]

# JupyterLab's user settings for the run: every cell in the DOM (no windowing), so that the page can
# be read and photographed whole, and no "official Jupyter news?" prompt over the notebook.
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"},
}

PANEL = ".jp-NotebookPanel"

# The execution indicator says "idle" before the kernel has even started (the toolbar's kernel name
# then reads "No Kernel"), and Run All Cells clicked then runs nothing: ready is a named kernel, idle.
KERNEL_READY = f"""() => {{
    const panel = document.querySelector('{PANEL}');
    const name = panel?.querySelector('.jp-KernelName')?.textContent.trim() ?? '';
    const status = panel?.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
    return name !== '' && name !== 'No Kernel' && status === 'idle';
}}"""

PROMPTS = f"[...document.querySelectorAll('{PANEL} .jp-CodeCell .jp-InputPrompt')].map(p => p.textContent)"

# Run All Cells marks every code cell [*] at once; a cell that raises clears the marks after it.
RUN_STARTED = f"() => {PROMPTS}.some(p => /[*\\d]/.test(p))"

RUN_IS_OVER = f"""() => {{
    const status = document.querySelector('{PANEL} .jp-Notebook-ExecutionIndicator')?.dataset.status;
    const prompts = {PROMPTS};
    return status === 'idle' && prompts.some(p => /\\d/.test(p)) && !prompts.some(p => p.includes('*'));
}}"""

IMAGES_DECODED = f"""() => [...document.querySelectorAll('{PANEL} .jp-OutputArea-output img')].every(i => i.complete)"""

# One entry per cell, in notebook order: its execution prompt, its outputs' MIME types, its images.
PAGE_STATE = f"""() => [...document.querySelectorAll('{PANEL} .jp-Notebook .jp-Cell')].map(cell => ({{
    prompt: cell.querySelector('.jp-InputPrompt')?.textContent.trim() ?? '',
    mimes: [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => o.dataset.mimeType ?? ''),
    images: [...cell.querySelectorAll('.jp-OutputArea-output img')].map(i => i.complete ? i.naturalWidth : 0),
}}))"""

SCROLLER = f"document.querySelector('{PANEL} .jp-WindowedPanel-outer')"


@dataclass(frozen=True)
class Lab:
    """A running JupyterLab: where it serves from, and how to call its REST API (for cleanup only)."""

    url: str
    token: str
    root: Path

    def api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def answers(self) -> bool:
        try:
            self.api("GET", "/api/status")
        except OSError:  # refused, or an HTTP error (urllib.error.HTTPError is an OSError)
            return False
        return True

    def shut_down_kernels(self) -> None:
        """Each notebook's kernel goes when its test ends: six idle kernels would hold memory for nothing."""
        for session in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{session['id']}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stripped_copy(source: Path, target: Path) -> None:
    """The notebook without outputs or execution counts: what the page then shows, this run produced.

    Solutions are expanded, as a reader who opens them sees them: a collapsed cell shows no
    execution prompt, and the prompts are how the page tells which cells ran and which still run.
    """
    nb = nbformat.read(source, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.get("jupyter", {}).pop("source_hidden", None)
    nbformat.write(nb, target)


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(NOT_FOUND, pytrace=False)
        pytest.skip(NOT_FOUND)
    return found


@pytest.fixture(scope="module")
def lab(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on copies of the notebooks, with settings, workspaces and runtime files of its own."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root = home / "notebooks"
    root.mkdir()
    for path in NOTEBOOKS:
        stripped_copy(path, root / path.name)
    for name, values in SETTINGS.items():
        (home / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (home / "settings" / name).write_text(json.dumps(values))
    port, token = free_port(), os.urandom(16).hex()
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
    ]
    if os.geteuid() == 0:  # CI on this machine runs as root
        command.append("--allow-root")
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "REDIS_URL": redis_url,  # the notebooks' wqsim.connect() reaches this session's redis-server
        "PYTHONPATH": pythonpath,  # and imports this checkout's wqsim
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
        "IPYTHONDIR": str(home / "ipython"),
    }
    server_log = home / "server.log"
    with server_log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    running = Lab(f"http://127.0.0.1:{port}", token, root)
    try:
        up = wait_until(lambda: proc.poll() is not None or running.answers(), START_TIMEOUT_S, interval_s=0.2)
        if not up or proc.poll() is not None:
            pytest.fail(f"JupyterLab did not answer on port {port}:\n{server_log.read_text()[-3000:]}", pytrace=False)
        yield running
    finally:
        if proc.poll() is None:
            try:
                running.api("POST", "/api/shutdown")  # shuts its kernels down too
            except OSError:
                proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def context(chromium: str) -> Iterator[BrowserContext]:
    """One browser context for all notebooks: JupyterLab's scripts are fetched once, then cached."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser.new_context(viewport={"width": WIDTH, "height": HEIGHT})
        browser.close()


@pytest.fixture(scope="module")
def page(context: BrowserContext) -> Page:
    """One tab for all notebooks. Each notebook is still a full load of JupyterLab from its URL, but
    in the renderer process of the notebook before, which keeps the JavaScript it compiled (the same
    JupyterLab each time): a new tab compiles it all again, some 2.5 s of CPU per notebook here."""
    tab = context.new_page()
    # Leaving a notebook that is still running (a failed test) asks "leave the page?": yes, as closing it would.
    tab.on("dialog", lambda dialog: dialog.accept() if dialog.type == "beforeunload" else dialog.dismiss())
    return tab


def leave(page: Page) -> None:
    """Unload JupyterLab (about:blank, in the same renderer) before its kernel is shut down, so that
    the page never sees the kernel go; and give the next notebook the viewport the screenshot grew."""
    with contextlib.suppress(PlaywrightError):  # a broken page: the next notebook's load replaces it
        page.goto("about:blank")
        page.set_viewport_size({"width": WIDTH, "height": HEIGHT})


def run_all_cells(page: Page) -> None:
    """Run > Run All Cells, clicked in the menu bar as a reader would."""
    page.locator("#jp-MainMenu .lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu .lm-Menu-item[data-command='runmenu:run-all']").click()


def save(page: Page) -> None:
    """File > Save (Ctrl+S), waiting for the server to have written the notebook."""
    with page.expect_response(lambda r: "/api/contents/" in r.url and r.request.method == "PUT") as saved:
        page.keyboard.press("Control+s")
    assert saved.value.ok, f"saving failed: HTTP {saved.value.status}"


def screenshot(page: Page, target: Path) -> None:
    """The whole notebook in one image: the viewport grows until the notebook no longer scrolls."""
    chrome = page.evaluate(f"() => window.innerHeight - {SCROLLER}.clientHeight")
    content = page.evaluate(f"() => {SCROLLER}.scrollHeight")
    height = min(chrome + content, MAX_SCREENSHOT_HEIGHT)
    page.set_viewport_size({"width": WIDTH, "height": height})
    page.wait_for_function(f"h => {SCROLLER}.clientHeight >= h", arg=height - chrome, polling=POLL_MS)
    page.evaluate(f"() => {{ {SCROLLER}.scrollTop = 0; }}")
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target))


def has_stderr(cell: nbformat.NotebookNode) -> bool:
    return any(o.output_type == "stream" and o.name == "stderr" for o in cell.get("outputs", []))


def png_count(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def first_line(cell: nbformat.NotebookNode) -> str:
    return next((line for line in cell.source.splitlines() if line.strip()), "")


def problems(committed: nbformat.NotebookNode, saved: nbformat.NotebookNode, page: list[dict[str, Any]]) -> list[str]:
    """Everything wrong with one run, each naming its cell (index in the notebook, and first line)."""
    if len(page) != len(committed.cells):
        return [f"the page shows {len(page)} cells, the notebook has {len(committed.cells)}"]
    found: list[str] = []
    for i, (cell, ran, shown) in enumerate(zip(committed.cells, saved.cells, page, strict=True)):
        if cell.cell_type != "code":
            continue
        name = f"cell {i} ({first_line(cell)!r})"
        errors = [o for o in ran.outputs if o.output_type == "error"]
        for error in errors:
            found.append(f"{name} raised {error.ename}: {error.evalue}")
        if not (re.search(r"\d", shown["prompt"]) and ran.get("execution_count")):
            found.append(f"{name} did not run (prompt {shown['prompt']!r})")
        if not errors and STDERR in shown["mimes"] and not has_stderr(cell):
            found.append(f"{name} printed to stderr, which its committed output does not")
        blank = sum(width == 0 for width in shown["images"])
        if blank:
            found.append(f"{name}: {blank} of its {len(shown['images'])} images did not render")
    wanted, rendered = png_count(committed), sum(len(shown["images"]) for shown in page)
    if rendered < wanted:
        found.append(f"{rendered} images on the page, the committed notebook has {wanted} PNG outputs")
    return found


def open_and_run_all(page: Page, lab: Lab, path: Path, target: Path) -> dict[str, float]:
    """Open the notebook, Run All Cells, wait for the last cell, save; the seconds each step took."""
    took: dict[str, float] = {}
    began = time.monotonic()
    # /doc: the single-document view, one notebook and no side panels; reset: no earlier tabs restored.
    page.goto(f"{lab.url}/doc/tree/{path.name}?reset&token={lab.token}")
    page.wait_for_function(KERNEL_READY, timeout=OPEN_TIMEOUT_S * 1000, polling=POLL_MS)
    took["open"], began = time.monotonic() - began, time.monotonic()
    run_all_cells(page)
    try:
        page.wait_for_function(RUN_STARTED, timeout=STARTED_TIMEOUT_S * 1000, polling=POLL_MS)
        page.wait_for_function(RUN_IS_OVER, timeout=RUN_TIMEOUT_S * 1000, polling=POLL_MS)
    except PlaywrightTimeout:
        screenshot(page, target)
        what = f"still running after {RUN_TIMEOUT_S} s" if page.evaluate(RUN_STARTED) else "Run All Cells ran nothing"
        pytest.fail(f"{path.name}: {what}; screenshot: {target}", pytrace=False)
    took["run"], began = time.monotonic() - began, time.monotonic()
    save(page)
    with contextlib.suppress(PlaywrightTimeout):  # images still loading are reported by name
        page.wait_for_function(IMAGES_DECODED, timeout=IMAGES_TIMEOUT_S * 1000, polling=POLL_MS)
    took["save"] = time.monotonic() - began
    return took


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_jupyterlab_without_errors_and_renders_every_figure(path: Path, page: Page, lab: Lab) -> None:
    target = SCREENSHOTS / f"{path.stem}.png"
    try:
        took = open_and_run_all(page, lab, path, target)
        state = page.evaluate(PAGE_STATE)
        screenshot(page, target)
    finally:
        leave(page)
        lab.shut_down_kernels()
    log.info("%s: %s; screenshot %s", path.name, ", ".join(f"{k} {v:.1f} s" for k, v in took.items()), target)
    print(f"{path.name}: {', '.join(f'{k} {v:.1f} s' for k, v in took.items())}; screenshot: {target}")
    committed = nbformat.read(path, as_version=4)
    saved = nbformat.read(lab.root / path.name, as_version=4)
    found = problems(committed, saved, state)
    if found:
        pytest.fail(f"{path.name} in JupyterLab (screenshot: {target}):\n" + "\n".join(found), pytrace=False)
