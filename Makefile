# The two commands: `make demo` (the proxy against the embedded sandbox) and `make test`.
# Both work from a bare machine: they create .venv and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test race lint typecheck unit setup system-deps clean bench bench-deps

demo: $(STAMP)
	$(BIN)/nmbrs-proxy demo

test: $(STAMP) system-deps lint typecheck unit

setup: $(STAMP) system-deps

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest

# The replica tests at full length: 2 minutes of load per store backend, 20 lease-holder kills.
race: $(STAMP) system-deps
	NMBRS_PROXY_RACE_SECONDS=120 NMBRS_PROXY_FAULT_CYCLES=20 $(BIN)/pytest -s tests/test_replicas.py

$(STAMP): pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "installing python3-venv"; apt-get update -qq && apt-get install -y -qq python3-venv; \
	  $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,fast]'
	rm -f $(VENV)/.installed-*
	touch $@

# Programs the test suite starts for real (none are faked): installed from Debian's packages.
SYSTEM_PROGRAMS := chromium:chromium redis-server:redis-server
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
BENCH_PROGRAMS := wrk:wrk nginx:nginx curl:curl openssl:openssl
BENCH_VENV     := bench/.venv
BENCH_STAMP    := $(BENCH_VENV)/.installed-$(shell cat bench/requirements.txt | cksum | cut -d' ' -f1)
BENCH_ARGS     ?=

bench: $(STAMP) bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/chart.py bench/results/latest.json bench/results/chart.png

bench-deps: $(BENCH_STAMP)
	@PATH="$$PATH:/usr/sbin:/sbin" $(MAKE) --no-print-directory system-deps SYSTEM_PROGRAMS="$(BENCH_PROGRAMS)"

# A venv of its own: mitmproxy pins versions of libraries the project also uses.
$(BENCH_STAMP): bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q --upgrade pip
	$(BENCH_VENV)/bin/pip install -q -r bench/requirements.txt
	rm -f $(BENCH_VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) $(BENCH_VENV) .mypy_cache .ruff_cache .pytest_cache
