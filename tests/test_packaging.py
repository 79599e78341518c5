"""One Python floor, one version string, dependencies declared as imported, and a licence."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

import yaml

import wqsim

ROOT = Path(__file__).parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
FLOOR = (3, 11)  # tomllib in the tests; 3.11-only syntax and library calls in wqsim


def test_requires_python_is_the_floor_the_code_needs_and_every_tool_agrees():
    assert PROJECT["requires-python"] == ">=3.11"
    assert sys.version_info >= FLOOR
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert PYPROJECT["tool"]["mypy"]["python_version"] == "3.11"
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    assert re.search(r"^FROM python:3\.11-slim$", (ROOT / "Dockerfile").read_text(), re.M)


def test_wqsim_version_is_written_once_and_is_the_installed_metadata_version():
    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "wqsim.__version__"}
    assert wqsim.__version__ == importlib.metadata.version("wqsim")


def test_the_licence_is_mit_as_an_spdx_expression_with_its_file():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the wqsim authors" in text


# Import names that differ from their distribution's name, and the project's own modules.
IMPORT_TO_DIST = {"yaml": "pyyaml"}
NOT_DISTRIBUTIONS = {"wqsim", "benchmarks", "helpers"}
# Declared for what they are (tools run as programs or kernels), never imported.
TOOLS = {"nbval", "ipykernel", "jupyterlab", "check-jsonschema", "pytest-timeout", "pytest-xdist"}
TOOLS |= {"ruff", "mypy", "pandas-stubs", "types-tqdm"}


def _imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _imported(*folders: str) -> set[str]:
    names: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            names |= _imports(path.read_text())
    return names


def _notebook_imports() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                source = "".join(cell["source"])
                names |= _imports("\n".join(line for line in source.splitlines() if not line.startswith(("%", "!"))))
    return names


EXTRA_TO_DIST = {"hiredis": "hiredis", "lua": "lupa"}  # redis[hiredis], fakeredis[lua]


def _declared(*groups: list[str]) -> set[str]:
    """The distributions the requirements install by name, and those their [extras] bring."""
    names: set[str] = set()
    for group in groups:
        for requirement in group:
            match = re.match(r"([A-Za-z0-9_.-]+)(?:\[([^\]]+)\])?", requirement)
            assert match, requirement
            names.add(match.group(1).lower())
            names.update(EXTRA_TO_DIST[extra] for extra in (match.group(2) or "").split(",") if extra)
    return names


def _third_party(names: set[str]) -> set[str]:
    return {IMPORT_TO_DIST.get(n, n) for n in names - set(sys.stdlib_module_names) - NOT_DISTRIBUTIONS - {"__future__"}}


def test_every_third_party_import_is_declared_in_the_extra_that_needs_it():
    extras = PROJECT["optional-dependencies"]
    core = _declared(PROJECT["dependencies"])
    assert _third_party(_imported("wqsim")) <= core
    # The notebooks run where the notebook extra is installed (and under nbval, the test extra).
    assert _third_party(_notebook_imports()) <= core | (_declared(extras["notebook"]) & _declared(extras["test"]))
    assert _third_party(_imported("tests")) <= core | _declared(extras["test"])
    assert _third_party(_imported("benchmarks")) <= core | _declared(extras["bench"])


def test_every_declared_dependency_is_imported_or_is_a_tool():
    extras = PROJECT["optional-dependencies"]
    imported = _third_party(_imported("wqsim", "tests", "benchmarks") | _notebook_imports())
    declared = _declared(PROJECT["dependencies"], *extras.values())
    assert declared - imported - TOOLS - {"lupa"} == set()  # lupa: fakeredis[lua] runs wqsim's Lua with it
