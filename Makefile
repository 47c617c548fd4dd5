# The two Quick-start commands (make run, make test) set themselves up: they
# create .venv and install the package into it on first use, and again
# whenever pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint fmt bench docs

BENCHMARKS := crc32 throughput small_files concurrency big_runs huge_runs per_file_costs crowded_roots memory resume links_reload abandoned_requests proxies slow_readers

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: start the service (the built-in sample tree unless CONFIG=path/to/config.toml)
run: $(STAMP)
	$(BIN)/export-service serve $(if $(CONFIG),--config $(CONFIG))

## test: run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff, mypy, hadolint and kubernetes-validate, as CI runs them
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint --failure-threshold error Dockerfile
	$(BIN)/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml

## docs: build the docs site into site/ with warnings as errors (needs Graphviz's
## dot for the diagrams); open site/index.html
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

## fmt: apply the fixes ruff knows, then ruff format (what the ruff steps of lint check)
fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: every benchmark under bench/, each printing a Markdown table (a few minutes;
## the throughput benchmark installs Debian's nginx-light when it is missing and it can)
bench: $(STAMP)
	@for name in $(BENCHMARKS); do $(BIN)/python bench/$$name.py || exit 1; done
