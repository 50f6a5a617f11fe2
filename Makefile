# Two commands: `make demo` and `make test`. Each sets up everything it needs and is safe to run twice.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_WORKERS ?= 2
# Python writes each module's .pyc the first time any process imports it, and every later process reuses it. These
# machines set PYTHONDONTWRITEBYTECODE=1, under which every process (each pipeline step, CLI call, service, test
# worker) would compile all its imports again, every time: ~1 s of CPU for a step that imports pandas and sklearn.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-fast setup system venv bench lint compile clean down

demo: setup
	$(BIN)/kfrelease demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# TEST_WORKERS (default 2, one per core) pytest-xdist workers, each with its own session stack (tests/conftest.py:
	@# own home, ports no other stack of the run claimed), a file at a time. A third worker on 2 cores took the idle
	@# CPU (70-75 % -> 88 % busy) but stretched every timed test: 783 s of pytest against 804-849 s with two, 858 s
	@# in all against 845-898 (a third stack to start), within the spread of two workers' runs. Any pytest failure fails make
	@# test, "no tests collected" (exit 5) too; .ci/run is where an empty collection is told apart and allowed. Files go
	@# out heaviest first, those that mostly compute and those that mostly wait in turn (tests/conftest.py file_order, from
	@# the slow tests' marks; --no-loadscope-reorder keeps that order instead of xdist's most-tests-first), so the
	@# workers end together and a worker waiting on traffic runs beside one that computes. --max-worker-restart=0: a
	@# worker that crashes (a segfault) fails the run at once; a replaced worker once left pytest-xdist 3.8 waiting with
	@# both idle.
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=0 $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

setup: system venv

system:
	@bash scripts/system-deps.sh

venv: $(STAMP)

$(STAMP): setup.py constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==26.3"
	@# No byte-compiling here (pip --no-compile): Python writes each module's .pyc the first time a process imports it
	@# (PYTHONDONTWRITEBYTECODE is unexported above). Compiling the whole venv ahead took ~30 s of a fresh setup on
	@# 2 cores for ~34,000 files, most of which no process ever imports (plotly's validators, sympy, test folders).
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e ".[dev,boosters]"
	@touch $(STAMP)

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

compile: setup
	$(BIN)/kfrelease compile

down:
	-$(BIN)/kfrelease down

clean: down
	rm -rf $(VENV) build *.egg-info
