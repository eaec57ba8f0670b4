# Every target installs what it needs: a fresh machine needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-test

BENCH_VENV := .bench-venv
BENCH_STAMP := $(BENCH_VENV)/.installed-bench

.PHONY: test lint typecheck unit demo bench bench-self bench-instructions clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

test: lint typecheck unit

demo: $(STAMP)
	$(BIN)/python examples/demo.py

# The comparison with other libraries: an environment of its own, never needed by make test.
$(BENCH_STAMP): pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet -r benchmarks/requirements.txt
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $(BENCH_STAMP)

# BENCH_ARGS, e.g. "--rounds 80" or "--only ours-installed,openlit": see compare.py --help.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python benchmarks/compare.py $(BENCH_ARGS)

# This package alone, in the test environment: its transport and installed paths side by
# side with plain ollama in one process, and delivery throughput.
bench-self: $(STAMP)
	$(BIN)/python benchmarks/bench_transport.py
	$(BIN)/python benchmarks/bench_delivery.py

# Instructions per call and per delivered record, counted by callgrind (needs valgrind).
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/count_instructions.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
