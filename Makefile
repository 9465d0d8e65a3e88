# The README's two commands: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Prism (npm) validates the vendor requests in the connector tests; without npm those tests skip
# locally (and fail in CI, where .ci/run installs Node first).
NODE_STAMP := node_modules/.installed-stamp

.PHONY: demo test lint bench lock sandbox clean

$(STAMP): pyproject.toml requirements.lock
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "healthie-sync needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/healthie-sync demo

$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else \
	  echo "make: npm not found; tests that need Prism will skip (install Node.js 20 to run them)"; \
	fi

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check app workers connectors sandbox tests bench tools
	$(BIN)/mypy

# The ingest benchmark loads the server with wrk (Debian's package); installed here when missing.
bench: $(STAMP) $(NODE_STAMP)
	@command -v wrk >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
	  else \
	    echo "make: wrk not found; install it (apt-get install wrk) for the ingest benchmark"; \
	  fi; }
	$(BIN)/python -m bench $(BENCH_ARGS)

sandbox: $(STAMP)
	$(BIN)/healthie-sync sandbox

# Re-resolve pinned versions (run by a developer, never by CI): the lock is what fresh installs get.
lock:
	rm -rf /tmp/healthie-sync-lock && $(PYTHON) -m venv /tmp/healthie-sync-lock
	/tmp/healthie-sync-lock/bin/pip install --quiet 'setuptools==80.9.0' && /tmp/healthie-sync-lock/bin/pip install --quiet -e '.[dev]'
	/tmp/healthie-sync-lock/bin/pip freeze --all --exclude-editable | grep -v -e '^-e' -e '^pip==' > requirements.lock
	/tmp/healthie-sync-lock/bin/python tools/runtime_lock.py . > requirements.runtime.lock

clean:
	rm -rf $(VENV) node_modules .healthie-sync .pytest_cache .mypy_cache .ruff_cache
