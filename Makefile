# Two commands for a fresh clone (see README.md):
#   make demo   -> creates .venv, installs everything, writes the synthetic dataset, runs the workflow
#   make test   -> creates .venv, installs everything, runs the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
DEMO_IMAGES ?= 12
PYTEST_ARGS ?=
# Test workers (pytest-xdist): a worker computes while another waits on SLURM or a Snakemake subprocess;
# the shared fixtures are built once per run (tests/conftest.py). XDIST= runs the suite in one process.
XDIST ?= -n auto --dist loadgroup

SCVERSE_VENV ?= .venv-scverse

.PHONY: setup scverse-env demo test test-fast lint bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[workflow,test,gpu,lint,bench]"
	touch $@

# The scverse extra (spatialdata, scanpy, bioio) in its own environment: the tests read the outputs
# with it (tests/scverse/check.py); spatialdata would downgrade dask and ome-zarr in .venv.
scverse-env: $(SCVERSE_VENV)/.installed

$(SCVERSE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(SCVERSE_VENV)
	$(SCVERSE_VENV)/bin/python -m pip install --upgrade pip
	$(SCVERSE_VENV)/bin/python -m pip install ".[scverse]"
	touch $@

resources/demo/train.csv: | setup
	$(BIN)/hpa-batch synth --out resources/demo --n-images $(DEMO_IMAGES) --seed 0 \
		--sizes 1728,2048 --cell-lines "U-2 OS,A-431,U-251 MG" --workers 2

demo: setup resources/demo/train.csv
	$(BIN)/snakemake --cores all --configfile config/demo.yaml
	$(BIN)/hpa-batch info results/zarr/$$($(BIN)/hpa-batch plan --config config/demo.yaml --format names | head -1).zarr

# The slurm-marked tests need a local SLURM (Debian slurm-wlm + munge, installed and started as root by
# tests/slurm/harness.sh); without root they are skipped.
test: setup
	@if [ "$$(id -u)" = 0 ]; then bash tests/slurm/harness.sh start; else echo "not root: SLURM tests will be skipped"; fi
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; \
	  if [ "$$(id -u)" = 0 ]; then bash tests/slurm/harness.sh stop; fi; exit $$rc

# ruff (lint + format), snakefmt and mypy (disallow_untyped_defs on hpa_batch), configured in
# pyproject.toml; CI runs this before the tests.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile workflow/
	$(BIN)/mypy

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/convert.py
	$(BIN)/python bench/segment.py
	$(BIN)/python bench/tiles.py

clean-demo:
	rm -rf resources/demo results logs .snakemake
