# Every target sets up .venv itself, so each works from a clean clone on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
# Build the extension and run `cargo test` against the same interpreter.
export PYO3_PYTHON := $(PY)
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test bench build lint rust-check py-check clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.8,<2"
	touch $@

# Release build: debug builds make every timing meaningless and the property tests slow.
build: $(VENV)/.installed
	$(VENV)/bin/maturin develop --release --quiet --extras dev

demo: build
	$(PY) examples/demo.py

rust-check: $(VENV)/.installed
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo test --quiet

py-check: build
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest llm_agent_runtime._core --allowlist stubtest-allowlist.txt

# Property tests draw the same examples on every run, so a run is reproducible; explore
# afresh with `make test PYTEST_ARGS=`.
PYTEST_ARGS ?= --hypothesis-seed=0

# PostgreSQL and Redis run for the tests only, one run per checkout at a time (a second run
# would replace the first one's servers), and are stopped on every exit: a failed test, a
# failed start, Ctrl-C or SIGTERM.
WITH_SERVICES = exec 9>.services.lock; \
	flock -n 9 || { echo "tests or benchmarks already run in this checkout" >&2; exit 1; }; \
	trap 'scripts/services.sh stop' EXIT; trap 'exit 143' TERM HUP; \
	scripts/services.sh start 9>&- && . .services/env &&

test: build rust-check py-check
	$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed
	$(VENV)/bin/maturin develop --release --quiet --extras dev,bench
	$(WITH_SERVICES) $(PY) -m pytest benches --benchmark-enable \
		--benchmark-json=benches/.results.json --timeout=0 $(BENCH_ARGS)
	$(PY) benches/report.py benches/.results.json benches/RESULTS.md

clean:
	rm -rf $(VENV) target
