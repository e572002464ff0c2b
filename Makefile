# Every target sets up .venv itself, so each works from a clean clone on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(abspath $(VENV))/bin/python
# Build the extension and run `cargo test` against the same interpreter.
export PYO3_PYTHON := $(PY)
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: demo test bench build lint rust-check py-check clean toolchain test-toolchain

# A shared libpython that a program can link: `cargo test` and clippy's test targets embed
# Python (a static-only build, or Debian's python3 without python3-dev, has none).
export LIBPYTHON_CHECK := import os, sys, sysconfig; v = sysconfig.get_config_var; \
	sys.exit(not (v("Py_ENABLE_SHARED") and os.path.exists(os.path.join(v("LIBDIR"), v("LDLIBRARY")))))

# What the build needs and `pip` cannot install: fails at once, naming what is missing.
RUST_VERSION := $(shell sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
toolchain:
	@missing=(); have=$$(rustc --version 2>/dev/null | cut -d' ' -f2); \
	if [ -z "$$have" ] || ! command -v cargo >/dev/null; then \
	  missing+=("Rust >= $(RUST_VERSION) (cargo, rustc), from rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y -c rustfmt,clippy, then . ~/.cargo/env"); \
	else \
	  [ "$$(printf '%s\n' "$(RUST_VERSION)" "$$have" | sort -V | head -n1)" = "$(RUST_VERSION)" ] || \
	    missing+=("rustc >= $(RUST_VERSION) (Cargo.toml's rust-version; found $$have): rustup update stable"); \
	  cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt: rustup component add rustfmt"); \
	  cargo clippy --version >/dev/null 2>&1 || missing+=("clippy: rustup component add clippy"); \
	fi; \
	scratch=$$(mktemp -d); \
	if ! command -v cc >/dev/null; then \
	  missing+=("a C compiler and linker as cc: apt-get install build-essential (Debian, Ubuntu)"); \
	elif ! echo 'int main(void) { return 0; }' | cc -x c - -o "$$scratch/a.out" 2>/dev/null; then \
	  missing+=("a C library to link against (cc links nothing): apt-get install build-essential"); \
	fi; \
	rm -rf "$$scratch"; \
	if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	  missing+=("Python >= 3.11 as $(PYTHON) (or make PYTHON=python3.12 ...)"); \
	else \
	  $(PYTHON) -c 'import ensurepip' 2>/dev/null || \
	    missing+=("venv support for $(PYTHON): apt-get install python3-venv"); \
	fi; \
	[ $${#missing[@]} -eq 0 ] || { printf 'missing: %s\n' "$${missing[@]}" >&2; exit 1; }

# What the tests need besides: checked before the build, so a missing part fails at once.
test-toolchain: toolchain
	@$(PYTHON) -c "$$LIBPYTHON_CHECK" 2>/dev/null || { printf 'missing: %s\n' \
	  "libpython to link the Rust tests against (cargo test embeds Python): apt-get install python3-dev, or a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)" >&2; \
	  exit 1; }
	@scripts/services.sh check

# A venv left half made (its python, no pip: venv support was missing) is made again.
$(VENV)/.installed: pyproject.toml
	$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9,<2"
	touch $@

# Release build: debug builds make every timing meaningless and the property tests slow.
build: toolchain $(VENV)/.installed
	$(VENV)/bin/maturin develop --release --quiet --extras dev

demo: build
	$(PY) -m llm_agent_runtime.demo

rust-check: test-toolchain $(VENV)/.installed
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

test: test-toolchain build rust-check py-check
	$(WITH_SERVICES) $(PY) -m pytest $(PYTEST_ARGS)

bench: toolchain $(VENV)/.installed
	$(VENV)/bin/maturin develop --release --quiet --extras dev,bench
	$(WITH_SERVICES) $(PY) -m pytest benches --benchmark-enable \
		--benchmark-json=benches/.results.json --timeout=0 $(BENCH_ARGS)
	$(PY) benches/report.py benches/.results.json benches/RESULTS.md

clean:
	rm -rf $(VENV) target
