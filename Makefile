# Quickstart: `make demo` runs the whole pipeline on the embedded corpus; `make test` runs the tests.
# Both set themselves up on a fresh machine: a .venv with pinned versions and the package installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-all bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: on a CPU box this takes the local CPU wheel, on a GPU box the CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# make demo BLIMP=path/to/blimp adds BLiMP (strict and official) for every model to the report
BLIMP ?=
demo: $(STAMP)
	$(BIN)/logitcache run --out work/demo $(if $(BLIMP),--set 'eval.blimp="$(abspath $(BLIMP))"')

test: $(STAMP)
	$(BIN)/python -m pytest -q -x

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -x -m slow

test-all: test test-slow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_dump.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) work .pytest_cache
