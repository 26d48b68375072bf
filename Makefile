# The two entry points of the README: `make build` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
MLOS := $(VENV)/bin/mlos-repro
OUT ?= out

.PHONY: all deps build test lint bench clean

all: build

deps: $(VENV)/.deps-installed

$(VENV)/.deps-installed: pyproject.toml scripts/install-deps
	VENV=$(VENV) scripts/install-deps
	touch $@

# Build the default MLOS Linux, then rebuild it without the cache and compare every digest.
build: deps
	$(MLOS) fetch
	$(MLOS) build --out $(OUT)
	$(MLOS) build --no-cache --out $(OUT)/.rebuild
	cmp $(OUT)/manifest.json $(OUT)/.rebuild/manifest.json
	@echo "reproducible: every output of $(OUT)/manifest.json was rebuilt bit for bit"

test: deps
	scripts/run-tests

lint: deps
	$(VENV)/bin/ruff check mlos_repro tests benchmarks
	$(VENV)/bin/mypy

bench: deps
	$(VENV)/bin/python benchmarks/engine.py

clean:
	rm -rf $(OUT) .pytest_cache
