# The two Quick-start commands (make run, make test) set themselves up: they
# create .venv and install into it on first use, and again whenever
# pyproject.toml changes. make run installs only what serving needs (the
# package, editable: 52 MB); make test, lint, fmt and bench the development
# tools too (.[dev]: ~80 s, 417 MB).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed

.PHONY: run test test-lowest lint fmt bench docs

BENCHMARKS := crc32 throughput small_files concurrency big_runs huge_runs per_file_costs crowded_roots memory resume links_reload abandoned_requests proxies backend_proxy crc_passes slow_readers signed_urls cors selective_exports

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

# .[dev] includes the package: it also stands for what make run needs.
$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(RUN_STAMP)

## run: start the service (the built-in sample tree unless CONFIG=path/to/config.toml)
run: $(RUN_STAMP)
	$(BIN)/export-service serve $(if $(CONFIG),--config $(CONFIG))

## test: run the whole test suite, on TEST_WORKERS processes (TEST_WORKERS=0: in
## this one): on 2 idle cores, 3 workers took about 0.9 of the time of 2 (docs/development.md)
TEST_WORKERS ?= 3
test: $(DEV_STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

## test-lowest: the suite again, with the lowest version of each dependency that the
## pyproject files allow (make test installs the newest they allow), in .venv-lowest
LOWEST_VENV := .venv-lowest
LOWEST := $(LOWEST_VENV)/constraints.txt

# The constraints come from the bounds themselves (tests/lowest_versions.py);
# new ones mean installing again. PIP_CONSTRAINT, unlike pip's -c, holds for
# the build's own install (setuptools) and for the suite's (the light install).
$(LOWEST): pyproject.toml clients/backend/pyproject.toml tests/lowest_versions.py
	mkdir -p $(LOWEST_VENV)
	$(PYTHON) tests/lowest_versions.py pyproject.toml clients/backend/pyproject.toml >$@.new
	mv $@.new $@
	rm -f $(LOWEST_VENV)/.installed

# VENV set on make's command line would reach the suite's environment: a make
# the suite starts (the docs' quick start) would take .venv-lowest for .venv.
unexport VENV

test-lowest: $(LOWEST)
	PIP_CONSTRAINT=$(abspath $(LOWEST)) $(MAKE) --no-print-directory test VENV=$(LOWEST_VENV)

## lint: ruff, mypy, import-linter (the layers), hadolint and kubernetes-validate, as CI runs them
lint: $(DEV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/hadolint --failure-threshold error Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

## docs: build the docs site into site/ with warnings as errors (needs Graphviz's
## dot for the diagrams); open site/index.html
docs: $(DEV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## fmt: apply the fixes ruff knows, then ruff format (what the ruff steps of lint check)
fmt: $(DEV_STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: every benchmark under bench/, each printing a Markdown table (about 14
## minutes: 750 s measured on 2 cores, plus 33 s for backend_proxy and crc_passes
## and ~40 s for signed_urls;
## the throughput benchmark installs Debian's nginx-light when it is missing and it can)
bench: $(DEV_STAMP)
	@for name in $(BENCHMARKS); do $(BIN)/python bench/$$name.py || exit 1; done
