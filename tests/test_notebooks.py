"""The notebooks' shape, checked without running them (nbval runs them: see pyproject.toml).

Each opens with a numbered title and one sentence, then one setup cell with its
own queue; each is committed with the outputs of a clean run; between them they
show every plot wqsim.plots offers, and every figure is followed by a caption.

The caption convention: each code cell that draws a figure (one with an image
output, or one that calls a ``plots.`` function) is followed directly by a
markdown cell whose text starts with "*Figure N." (italic): a description in
words of what the figure shows, for readers who cannot see it. Figures are
numbered from 1 in each notebook.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]-*.ipynb"))
SEED_SECTIONS = {"01": "Overview", "02": "Testing", "03": "Shortcomings", "04": "Scaling", "05": "Sequential"}


def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_there_are_eight_numbered_notebooks_covering_the_seed_sections():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for path in NOTEBOOKS:
        number = path.name[:2]
        if number in SEED_SECTIONS:
            assert SEED_SECTIONS[number].lower() in path.name.lower() + source(cells(path)[0]).lower()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_opens_with_a_title_a_sentence_and_one_setup_cell(path):
    first, *rest = cells(path)
    assert first["cell_type"] == "markdown"
    title, *prose = [line for line in source(first).splitlines() if line.strip()]
    assert re.match(rf"# {path.name[:2]} · \S", title), title
    assert len(prose) == 1 and prose[0].startswith("You will"), "one sentence on what the reader will see"
    code = [c for c in rest if c["cell_type"] == "code"]
    setup = source(code[0])
    assert "wqsim.connect()" in setup and "queue.purge()" in setup
    assert sum("wqsim.connect(" in source(c) for c in code) == 1, "one connection, made in the setup cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_cells_hold_no_helper_code_and_draw_seeds_from_the_setup_cell(path):
    """Helpers belong in wqsim: the only functions a notebook defines are task handlers it
    registers. A random choice takes its seed from the SEED of the setup cell."""
    code = [source(c) for c in cells(path) if c["cell_type"] == "code"]
    for text in code:
        tree = ast.parse(re.sub(r"^%.*$", "", text, flags=re.M))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                decorators = [ast.unparse(d) for d in getattr(node, "decorator_list", [])]
                assert any(d.startswith("wqsim.register(") for d in decorators), f"{node.name} in {path.name}"
        assert not re.search(r"\bseed=\d", text), f"a literal seed in {path.name}: use SEED"
    if any("seed=SEED" in text for text in code[1:]):
        assert "SEED = " in code[0], "SEED is defined in the setup cell"


def setup_source(path: Path) -> str:
    return next(source(c) for c in cells(path) if c["cell_type"] == "code")


def test_each_notebook_has_a_queue_of_its_own():
    """Its own base name, made unique to the reader and the kernel: two people on one Redis never collide."""
    names = [re.search(r'QUEUE = wqsim\.session_queue_name\("([^"]+)"\)', setup_source(p)).group(1) for p in NOTEBOOKS]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_queue_a_notebook_uses_on_the_shared_redis_derives_from_its_session_name(path):
    """No fixed queue names on the notebook's Redis: sub-queues are f"{QUEUE}-...", never a literal."""
    for text in (source(c) for c in cells(path) if c["cell_type"] == "code"):
        assert not re.search(r'wqsim\.Queue\(client, "|queue="', text), text
        for name in re.findall(r'wqsim\.Queue\(client, (f?"[^"]*")', text):
            assert name.startswith('f"{QUEUE}-'), name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_experiment_that_writes_to_the_notebooks_queue_starts_by_purging_it(path):
    """Cells tagged ``experiment`` start an experiment and may be re-run at any time: one that
    writes to ``queue`` (the setup cell's) purges it first, so its counts are of its own records."""
    code = [c for c in cells(path) if c["cell_type"] == "code"][1:]
    experiments = [c for c in code if "experiment" in c["metadata"].get("tags", [])]
    assert experiments, "the notebook tags the cells that start its experiments"
    block: list[str] = []
    for cell in code + [None]:
        if cell is None or "experiment" in cell["metadata"].get("tags", []):
            if block and re.search(r"queue\.enqueue\(|generate\(queue\b", "\n".join(block)):
                first = block[0]
                assert "queue.purge()" in first, first
                writes = re.search(r"queue\.enqueue\(|generate\(queue\b", first)
                assert writes is None or first.index("queue.purge()") < writes.start(), first
            block = []
        if cell is not None:
            block.append(source(cell))


def test_no_notebook_links_outside_the_repository():
    for path in NOTEBOOKS:
        for cell in cells(path):
            assert "../shared" not in source(cell) and "seed/README" not in source(cell), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_is_committed_with_the_outputs_of_a_clean_run(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "run top to bottom, once, in a fresh kernel"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    for c in code:
        ast.parse(re.sub(r"^%.*$", "", source(c), flags=re.M))  # valid Python, magics aside


def draws_a_figure(cell: dict) -> bool:
    images = any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
    return cell["cell_type"] == "code" and (
        images or re.search(r"\bplots\.(?!alt_text)\w+\(", source(cell)) is not None
    )


def caption_problems(notebook: list[dict]) -> list[str]:
    """What breaks the caption convention in a notebook's cells (empty if nothing)."""
    problems, numbers = [], []
    for i, cell in enumerate(notebook):
        if not draws_a_figure(cell):
            continue
        after = notebook[i + 1] if i + 1 < len(notebook) else None
        if after is None or after["cell_type"] != "markdown":
            problems.append(f"cell {i} draws a figure with no markdown cell after it")
            continue
        match = re.match(r"\*Figure (\d+)\. \S.{40,}\*$", source(after), flags=re.S)
        if not match:
            problems.append(f"cell {i + 1} is not a '*Figure N. ...*' caption: {source(after)[:80]!r}")
        else:
            numbers.append(int(match.group(1)))
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"figures numbered {numbers}, not 1, 2, 3...")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_figure_is_followed_by_a_markdown_caption_starting_figure(path):
    """Accessibility: a figure cell is followed by a markdown cell "*Figure N. ...*", numbered in order."""
    assert caption_problems(cells(path)) == []


def test_the_caption_check_catches_a_missing_a_misplaced_and_a_misnumbered_caption():
    def code(text, image=False):
        outputs = [{"output_type": "display_data", "data": {"image/png": "..."}}] if image else []
        return {"cell_type": "code", "source": text, "outputs": outputs}

    def markdown(text):
        return {"cell_type": "markdown", "source": text}

    caption = "*Figure {}. Tasks per second against the number of workers, with the ideal dashed.*"
    good = [code("plots.sweep(df, 'workers')", image=True), markdown(caption.format(1)), code("print(1)")]
    assert caption_problems(good) == []
    assert caption_problems([code("ax.plot([1, 2])", image=True), code("print(1)")])  # an image, no caption
    assert caption_problems([code("plots.queue_length(df)"), markdown("The queue drains.")])  # not a caption
    assert caption_problems([code("plots.queue_length(df)")])  # the last cell
    assert caption_problems(good + [code("plots.latency_cdf(df)"), markdown(caption.format(3))])  # 1, 3
    assert caption_problems([code("print(plots.alt_text(ax))"), markdown("Text.")]) == []  # no figure drawn


def test_every_figure_cell_of_the_committed_notebooks_has_an_image_and_a_caption():
    """The check above, seen from the outputs: each image output belongs to a captioned cell."""
    figures = [(p.name, c) for p in NOTEBOOKS for c in cells(p) if draws_a_figure(c)]
    assert len(figures) >= 7
    for name, cell in figures:
        assert any("image/png" in o.get("data", {}) for o in cell["outputs"]), f"a figure cell of {name} drew nothing"


def test_every_plot_appears_in_some_notebook():
    import wqsim.plots as plots

    public = {
        name
        for name in dir(plots)
        if not name.startswith("_")
        and callable(getattr(plots, name))
        and getattr(getattr(plots, name), "__module__", "") == "wqsim.plots"
    }
    used = {name for p in NOTEBOOKS for c in cells(p) for name in re.findall(r"plots\.(\w+)\(", source(c))}
    assert public - used == set()


@pytest.mark.real_redis
@pytest.mark.slow
def test_nbval_fails_a_notebook_whose_checked_output_no_longer_matches(tmp_path, redis_url):
    """The acceptance check on the checks: break one checked line (here, the result a
    dependent computes from its prerequisites) and nbval must report the mismatch."""
    notebook = next(p for p in NOTEBOOKS if p.name.startswith("05-"))
    broken = tmp_path / notebook.name
    text = notebook.read_text()
    assert text.count("sum = 13") == 1
    broken.write_text(text.replace("sum = 13", "sum = 14"))
    sanitize = notebook.parent / "nbval_sanitize.cfg"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            os.devnull,
            "--nbval",
            "--nbval-current-env",
            "--nbval-sanitize-with",
            str(sanitize),
            str(broken),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "REDIS_URL": redis_url},
    )
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "mismatch 'stdout'" in proc.stdout and "sum = 13" in proc.stdout
    assert "1 failed" in proc.stdout


# -- notebooks that teach like course chapters (issue 15, item 1) --------------------------------
# Each listed notebook: a "**Predict.**" prompt right before every experiment cell; "## Exercises" with
# two to four numbered exercises, each solution a hidden code cell tagged `solution` after a
# "Solution (expand the hidden cell)" line; "## Recap" with three to six bullets; "## References";
# links to its neighbours at the top (a markdown cell before the setup cell) and in the last cell.
# 06 and 07 join the list when they have the same sections.
TEACHING_NOTEBOOKS = (
    "01-overview-and-running",
    "02-testing",
    "03-shortcomings",
    "04-scaling",
    "05-sequential-tasks",
    "06-what-next",
    "07-break-it-yourself",
    "08-simulating-at-scale",
)
NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
PREDICT = re.compile(r"^\*\*Predict\.\*\*", flags=re.M)  # a paragraph of the cell before an experiment


def section(notebook: list[dict], heading: str) -> str | None:
    """The text under a markdown heading (to the next heading of the same level), or None."""
    text = "\n".join(source(c) for c in notebook if c["cell_type"] == "markdown")
    match = re.search(rf"^{re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return match.group(1) if match else None


def links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s]+\.ipynb)\)", text)


def teaching_problems(notebook: list[dict], name: str, present: set[str]) -> list[str]:
    """What a teaching notebook lacks (empty if nothing). ``present``: the notebook files beside it."""
    problems = []
    for i, cell in enumerate(notebook):
        tags = cell["metadata"].get("tags", [])
        if "experiment" in tags and "solution" not in tags:  # a solution's prompt is its exercise
            before = notebook[i - 1] if i else None
            if before is None or before["cell_type"] != "markdown" or not PREDICT.search(source(before)):
                problems.append(f"experiment cell {i} has no '**Predict.**' prompt right before it")
    # Exercises: numbered under '## Exercises', or '**Exercise N.**' where the lesson needs them.
    exercises = section(notebook, "## Exercises")
    markdown = "\n".join(source(c) for c in notebook if c["cell_type"] == "markdown")
    numbered = len(re.findall(r"^\d+\. ", exercises, flags=re.M)) if exercises is not None else 0
    inline = len(set(re.findall(r"^\*\*Exercise (\d+)\.\*\*", markdown, flags=re.M)))
    if not 2 <= max(numbered, inline) <= 4:
        problems.append("not two to four exercises (numbered under '## Exercises', or '**Exercise N.**')")
    solutions = [
        i for i, c in enumerate(notebook) if c["cell_type"] == "code" and "solution" in c["metadata"].get("tags", [])
    ]
    if len(solutions) < 2:
        problems.append(f"{len(solutions)} cells tagged 'solution', not at least two")
    for i in solutions:
        if not notebook[i]["metadata"].get("jupyter", {}).get("source_hidden"):
            problems.append(f"solution cell {i} is not hidden (metadata jupyter.source_hidden)")
        if not (i and source(notebook[i - 1]).startswith("Solution (expand the hidden cell)")):
            problems.append(f"solution cell {i} has no 'Solution (expand the hidden cell)' line before it")
    recap = section(notebook, "## Recap")
    if recap is None or not 3 <= len(re.findall(r"^- \S", recap, flags=re.M)) <= 6:
        problems.append("no '## Recap' of three to six bullets")
    references = section(notebook, "## References")
    if references is None or not re.search(r"^- \S", references, flags=re.M):
        problems.append("no '## References' list")
    number = int(name[:2])
    neighbours = [f for f in sorted(present) if f[:2] in (f"{number - 1:02d}", f"{number + 1:02d}")]
    setup = next((i for i, c in enumerate(notebook) if c["cell_type"] == "code"), len(notebook))
    top = " ".join(source(c) for c in notebook[:setup] if c["cell_type"] == "markdown")
    bottom = source(notebook[-1]) if notebook else ""
    for where, text in (("top", top), ("bottom", bottom)):
        # The line with the arrows: a top cell may also hold a map of every notebook.
        text = next((line for line in text.splitlines() if "←" in line or "→" in line), "")
        if sorted(links(text)) != neighbours:
            problems.append(f"the {where} links to {sorted(links(text))}, not to the neighbours {neighbours}")
    for cell in notebook:
        for target in links(source(cell)):
            if target not in present:
                problems.append(f"a link to {target}, which is not a notebook in notebooks/")
    return problems


@pytest.mark.parametrize("name", TEACHING_NOTEBOOKS)
def test_each_teaching_notebook_predicts_exercises_recaps_references_and_links_its_neighbours(name):
    present = {p.name for p in NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb")}
    assert f"{name}.ipynb" in present
    assert teaching_problems(cells(NOTEBOOK_DIR / f"{name}.ipynb"), name, present) == []


def test_the_teaching_check_catches_what_a_chapter_lacks():
    def markdown(text):
        return {"cell_type": "markdown", "metadata": {}, "source": text}

    def code(text, tags=(), hidden=False):
        metadata = {"tags": list(tags), **({"jupyter": {"source_hidden": True}} if hidden else {})}
        return {"cell_type": "code", "metadata": metadata, "source": text, "outputs": []}

    present = {"01-a.ipynb", "02-b.ipynb", "03-c.ipynb"}
    nav = "← [01 · A](01-a.ipynb) · [03 · C](03-c.ipynb) →"
    good = [
        markdown("# 02 · B\n\nYou will see."),
        markdown(nav),
        code("setup()"),
        markdown("**Predict.** How many?"),
        code("queue.purge()", tags=["experiment"]),
        markdown("## Exercises\n\n1. One.\n2. Two."),
        markdown("Solution (expand the hidden cell)"),
        code("one()", tags=["solution"], hidden=True),
        markdown("Solution (expand the hidden cell)"),
        code("two()", tags=["solution"], hidden=True),
        markdown("## Recap\n\n- a\n- b\n- c\n\n## References\n\n- Little, 1961.\n\n---\n\n" + nav),
    ]
    assert teaching_problems(good, "02-b", present) == []
    assert teaching_problems([c for i, c in enumerate(good) if i != 3], "02-b", present)  # no prompt
    assert teaching_problems(good[:7] + good[10:], "02-b", present)  # one solution only
    unhidden = good[:9] + [code("two()", tags=["solution"])] + good[10:]
    assert teaching_problems(unhidden, "02-b", present)
    assert teaching_problems(good[:-1] + [markdown("## Recap\n\n- a\n\n" + nav)], "02-b", present)  # no refs
    assert teaching_problems(good, "02-b", present - {"03-c.ipynb"})  # a link to a missing notebook
    assert teaching_problems(good[:1] + good[2:], "02-b", present)  # no links at the top
