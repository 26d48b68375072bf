# The two entry points of the README: `make build` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
MLOS := $(VENV)/bin/mlos-repro
OUT ?= out

.PHONY: all deps build test check lint bench clean

all: build

deps: $(VENV)/.deps-installed

$(VENV)/.deps-installed: pyproject.toml requirements.lock scripts/install-deps
	VENV=$(VENV) scripts/install-deps
	touch $@

# Build the default MLOS Linux, then rebuild every stage in a varied environment and
# compare every output bit for bit (OUT/verify.json; reports under OUT/reports/). Then sign
# a release of it with development keys (made once, outside the checkout) and check the
# release as an auditor and the ISO as a user would.
KEYS ?= $(HOME)/.local/share/mlos-repro/dev-keys
RELEASE ?= $(OUT)-release
build: deps
	$(MLOS) fetch
	$(MLOS) build --verify --out $(OUT)
	test -d $(KEYS) || $(MLOS) keys init $(KEYS)
	rm -rf $(RELEASE)
	$(MLOS) release --keys $(KEYS) --out $(RELEASE) --from $(OUT)
	$(MLOS) verify $(RELEASE) --root-key $(KEYS)/attestation/owner.pub.json --keyring $(KEYS)/archive-keyring.gpg
	$(MLOS) verify-iso $(RELEASE)/artifacts/iso/mlos.iso --keyring $(KEYS)/archive-keyring.gpg

# The whole suite, as CI runs it: unit and integration tests (root, slow, the benchmarks in --quick).
test: deps
	scripts/run-tests

# The fast tier, for every change: lint, types, import layers and the unit tests (no sandbox, no store).
check: deps
	scripts/run-tests -m unit -q

lint: deps
	$(VENV)/bin/ruff check mlos_repro tests benchmarks stage-tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: deps
	set -e; for b in benchmarks/[a-z]*.py; do echo "== $$b"; $(VENV)/bin/python $$b $(BENCH_ARGS); done

clean:
	rm -rf $(OUT) $(RELEASE) .pytest_cache
