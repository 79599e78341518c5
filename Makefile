# Two commands on a fresh machine (only python3 needed; the first makes the virtualenv):
#   make run    the seed's scenario on an embedded Redis (or $REDIS_URL)
#   make test   the whole test suite (tests and notebooks, four processes at once)
#   make lint   ruff's checks and formatter, and mypy --strict on wqsim/ (CI runs it before make test)
#   make bench  the benchmark suite against RQ, Celery, Huey and raw redis-py (a few minutes)
# Each installs what it needs once: a stamp file in the virtualenv remembers the install,
# and only a change to pyproject.toml repeats it (wqsim itself is an editable install).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,notebook,dev]"
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	touch $@

run: $(VENV)/.installed-run
	$(BIN)/wqsim run $(ARGS)

# Two steps: the suite on four processes, then, by itself, what compares timings with the simulation
# (tests marked "alone": measured beside three other test processes, a 2-core host times its neighbours).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -m "not alone" $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m alone -n 0 $(or $(PYTEST_ARGS),tests)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info build
