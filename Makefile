# streamplat: `make serve` runs the server, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help serve test test-unit lint typecheck bench clean system-deps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

system-deps: ## install what the tests need outside Python (Node.js, Chromium, fonts, redis-server, nginx) with apt-get, if missing
	@missing=""; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	test -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || missing="$$missing fonts-dejavu-core"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	test -x /usr/sbin/nginx || missing="$$missing nginx-light"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

serve: $(STAMP) ## run the server (all four ports) with ./config.toml
	$(BIN)/streamplat serve

# Four workers on two cores: most of the suite waits on real-time media and subprocesses, not on the CPU, and
# every server test runs twice (SQLite and PostgreSQL). loadscope keeps a module's tests (and its
# shared server) on one worker.
test: $(STAMP) system-deps ## run every test (real FFmpeg, real HTTP) on SQLite and PostgreSQL
	$(BIN)/python -m pytest -n 4 --dist loadscope

test-unit: $(STAMP) ## run the fast unit tests only
	$(BIN)/python -m pytest tests/unit

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP) ## mypy --strict on src/
	$(BIN)/mypy

bench: $(STAMP) ## run the benchmarks (print numbers; slow)
	$(BIN)/python bench/ingest_latency.py
	$(BIN)/python bench/vod_packaging.py
	$(BIN)/python bench/object_storage.py
	$(BIN)/python bench/api.py
	$(BIN)/python bench/ws_redis.py
	$(BIN)/python bench/nodes.py  # needs: PostgreSQL at TEST_PG_URL
	$(BIN)/python bench/llhls.py  # needs: apt-get install chromium nginx-light wrk
	$(BIN)/python bench/edge.py  # needs: apt-get install nginx-light wrk

clean: ## remove the virtualenv and caches (not your data directory)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache src/*.egg-info
