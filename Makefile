# Two commands do all the set-up on a fresh machine:
#   make demo   -> venv, install, demo catalog, offline demo model, ingest, storefront on http://127.0.0.1:8501
#   make test   -> venv, install (with test extras and Debian chromium), the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: demo test install install-dev browser compose lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: 2.13.0 is the CPU wheel; an open range would pull a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .[server,train]

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .[dev]

# Debian's chromium for the browser tests (playwright drives it; never `playwright install`).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }

# Debian's docker-compose validates docker-compose.yml without a Docker engine (tests/e2e/test_compose.py).
compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq docker-compose >/dev/null; fi; }

demo: install
	$(BIN)/shelfsight demo --port $(PORT)

test: install-dev browser compose
	$(BIN)/python -m pytest -q

lint: install-dev
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(MAKE) typecheck

# mypy, strict on the core library (settings in pyproject). mypy cannot follow the editable install's
# package-dir mapping, so it reads a tree of links laid out as the wheel installs the package.
TYPECHECK := build/typecheck
typecheck: install-dev
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/shelfsight
	for f in shelfsight/*.py; do ln -s ../../../$$f $(TYPECHECK)/shelfsight/; done
	for d in search ingest train evaluation data ui; do ln -s ../../../$$d $(TYPECHECK)/shelfsight/$$d; done
	MYPYPATH=$(TYPECHECK) $(BIN)/mypy -p shelfsight.search

bench: install
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/query_latency.py

clean:
	rm -rf .shelfsight artifacts .pytest_cache build
