# Tether: every target sets itself up on a fresh machine (Python >= 3.11 and make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= .tether/dev
LISTEN ?= 127.0.0.1:8420

.PHONY: run test lint fmt bench clean lock fuzz browser

$(STAMP): requirements/dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Tether needs Python >= 3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## run: set up, initialise a dev data dir if missing, start Tether with a narrated example
run: $(STAMP)
	$(BIN)/tether demo --data-dir $(DATA) --listen $(LISTEN)

## test: set up, lint and type-check, run the whole suite (one pytest-xdist worker per core; a
## module sharing a module-scoped fixture, and each named xdist_group, stays on one worker)
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -n auto --dist loadgroup

## browser: Debian's chromium for the web console's browser tests (Playwright drives it; no browser
## build is downloaded). Installed when missing and running as root; otherwise those tests skip.
browser:
	@command -v chromium >/dev/null || [ -n "$$TETHER_CHROMIUM" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "test: installing chromium (Debian package) for the console's browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
	      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "test: chromium could not be installed: the console's browser tests will skip"; \
	  else echo "test: no chromium and not root: the console's browser tests will skip (sudo apt-get install -y chromium)"; fi; \
	}

## fuzz: a longer API fuzzing run (TETHER_FUZZ_EXAMPLES per operation, 100 unless set)
fuzz: $(STAMP)
	TETHER_FUZZ_EXAMPLES=$${TETHER_FUZZ_EXAMPLES:-100} $(BIN)/python -m pytest tests/security/test_api_fuzz.py

## lint: ruff and mypy --strict on src/
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy src

fmt: $(STAMP)
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements/bench.lock
	@command -v wrk >/dev/null || { \
	  echo "bench: installing wrk (Debian package) for the light load generator"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y wrk || { apt-get update && apt-get install -y wrk; }; \
	  else sudo apt-get install -y wrk; fi; \
	} || { echo "bench: wrk is missing and could not be installed: run 'sudo apt-get install -y wrk' (Debian/Ubuntu), or 'python -m bench.light --generator asyncio'"; exit 1; }
	$(BIN)/python -m bench
	$(BIN)/python -m bench.light
	$(BIN)/python -m bench.compare --run --profile
	$(BIN)/python -m bench.mcp_bench  # after compare: adds its own section to bench/results/latest.md
	$(BIN)/python -m bench.reach_bench  # reach of one secret, 1,000 agents/secrets, 200 policies: its own section
	$(BIN)/python -m bench.replay_bench  # policy replay of 100,000 recorded decisions: its own section
	$(BIN)/python -m bench.engine_bench --optional  # PostgreSQL (TETHER_BENCH_PG_DSN or TETHER_TEST_PG_DSN): its own section; skipped without

## lock: re-resolve the locked dependencies (needs network to PyPI)
lock:
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv pip compile pyproject.toml --extra server --python-version 3.11 --generate-hashes --no-strip-extras -o requirements/runtime.lock
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes --no-strip-extras -o requirements/dev.lock

clean:
	rm -rf $(VENV) .tether .pytest_cache .mypy_cache .ruff_cache
