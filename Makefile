# Two commands on a fresh machine (only python3 needed; each makes its own virtualenv):
#   make run    the seed's scenario on an embedded Redis (or $REDIS_URL)
#   make test   the whole test suite
#   make bench  the benchmark suite against RQ, Celery, Huey and raw redis-py (a few minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

run: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/wqsim run $(ARGS)

test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,notebook]"
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis *.egg-info
