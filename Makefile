# The two commands: `make demo` (the proxy against the embedded sandbox) and `make test`.
# Both work from a bare machine: they create .venv and install what they need, at the exact
# versions of requirements/test.lock (hashes checked), so a fresh machine gets what CI tested.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/test.lock
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

# The venv of `make test-latest`: the newest releases pyproject.toml allows, lock untouched.
LATEST_VENV := .venv-latest

# How the locks are resolved (`make upgrade`): for every platform, with hashes, from the lowest
# Python the project supports. uv comes from the test lock itself.
COMPILE := $(BIN)/uv pip compile --quiet --universal --generate-hashes --python-version 3.11

.PHONY: demo test race lint layers typecheck unit setup system-deps clean bench bench-deps \
        upgrade test-latest lock

demo: $(STAMP)
	$(BIN)/nmbrs-proxy demo

test: $(STAMP) system-deps lint layers typecheck unit

setup: $(STAMP) system-deps

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench

# The import contracts of pyproject.toml's [tool.importlinter]: layers, no cycles, pure rules.
layers: $(STAMP)
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The replica tests at full length: 2 minutes of load per store backend, 20 lease-holder kills.
race: $(STAMP) system-deps
	NMBRS_PROXY_RACE_SECONDS=120 NMBRS_PROXY_FAULT_CYCLES=20 $(BIN)/pytest -s tests/e2e/test_replicas.py

# A new venv whenever pyproject.toml or the lock changes, so that it holds the lock and nothing
# else; the project itself is installed without dependencies and without build isolation (its
# build requirement, setuptools, is in the lock too).
$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Re-resolve every lock to the newest releases that pyproject.toml (and bench/requirements.txt)
# allow, install them, and run the whole suite. Commit the locks when it passes.
upgrade: $(STAMP)
	$(MAKE) --no-print-directory lock COMPILE="$(COMPILE) --upgrade"
	$(MAKE) --no-print-directory test

# Resolve the locks again after a change to the requirements, keeping every pin that still fits.
lock: $(STAMP)
	$(COMPILE) pyproject.toml requirements/build.in --extra test --extra fast -o $(LOCK)
	$(COMPILE) pyproject.toml requirements/build.in --extra fast -o requirements/runtime.lock
	$(COMPILE) pyproject.toml requirements/build.in --extra fast --extra otel \
	  -o requirements/runtime-otel.lock
	$(COMPILE) bench/requirements.txt -o bench/requirements.lock

# The suite against the newest releases, without touching the lock: an early warning of what
# the next `make upgrade` will bring.
test-latest: system-deps
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/pip install -q --upgrade pip
	$(LATEST_VENV)/bin/pip install -q --upgrade -e '.[test,fast]'
	$(LATEST_VENV)/bin/pip freeze --exclude-editable > $(LATEST_VENV)/resolved.txt
	@echo "resolved (unlocked): $$(tr '\n' ' ' < $(LATEST_VENV)/resolved.txt)"
	$(LATEST_VENV)/bin/ruff check proxy tests bench
	$(LATEST_VENV)/bin/lint-imports
	$(LATEST_VENV)/bin/mypy
	NMBRS_PROXY_UNLOCKED=1 $(LATEST_VENV)/bin/pytest

# Programs the test suite starts for real (none are faked): installed from Debian's packages.
SYSTEM_PROGRAMS := chromium:chromium redis-server:redis-server tinyproxy:tinyproxy
system-deps:
	@missing=""; for p in $(SYSTEM_PROGRAMS); do command -v $${p%%:*} >/dev/null || missing="$$missing $${p##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# `make bench`: nmbrs-proxy against nginx and mitmproxy on loopback (see BENCHMARKS.md). It takes
# about 15 minutes and loads both cores: not part of `make test`. BENCH_ARGS passes options to
# bench/run.py, e.g. `make bench BENCH_ARGS="--quick"` or `BENCH_ARGS="--only memory,expiry"`.
BENCH_PROGRAMS := wrk:wrk nginx:nginx curl:curl openssl:openssl tinyproxy:tinyproxy
BENCH_VENV     := bench/.venv
BENCH_LOCK     := bench/requirements.lock
BENCH_STAMP    := $(BENCH_VENV)/.installed-$(shell cat $(BENCH_LOCK) | cksum | cut -d' ' -f1)
BENCH_ARGS     ?=

bench: $(STAMP) bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/chart.py bench/results/latest.json bench/results/chart.png

bench-deps: $(BENCH_STAMP)
	@PATH="$$PATH:/usr/sbin:/sbin" $(MAKE) --no-print-directory system-deps SYSTEM_PROGRAMS="$(BENCH_PROGRAMS)"

# A venv of its own: mitmproxy pins versions of libraries the project also uses.
$(BENCH_STAMP): $(BENCH_LOCK)
	rm -rf $(BENCH_VENV)
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --require-hashes --no-deps -r $(BENCH_LOCK)
	touch $@

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache
