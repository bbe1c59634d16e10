# Two commands for a newcomer (see README):  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed first, deliberately (README: "Why torch is installed first").
# --no-compile: Python compiles each module when it is first imported, instead of pip compiling
# every module of every package up front (README: "Installing by hand").
TORCH_VERSION ?= 2.13.0
# Set to e.g. https://download.pytorch.org/whl/cpu for a CPU-only build from PyTorch's own index.
TORCH_INDEX ?=
DEMO_DIR ?= demo

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet --no-compile -e ".[test]"
	touch $@

# The main job, offline: the synthetic catalog (built on first use) -> a two-year embedding field.
demo: setup
	rm -rf $(DEMO_DIR)/catalog $(DEMO_DIR)/field.zarr $(DEMO_DIR)/field.stac $(DEMO_DIR)/field.runs
	$(BIN)/aef-pipeline demo-catalog $(DEMO_DIR)/catalog
	$(BIN)/aef-pipeline run --stac $(DEMO_DIR)/catalog/catalog.json --bbox 15.057 46.194 15.073 46.206 \
		--years 2021-2022 --out $(DEMO_DIR)/field.zarr --model tiny --device auto --workers 2
	$(BIN)/aef-pipeline info $(DEMO_DIR)/field.zarr

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Two test processes (pytest-xdist), a file each at a time: the suite waits on worker processes,
# clusters and subprocesses for about a third of its time, so two processes finish it sooner even
# on two cores. `pytest tests/test_x.py` on its own still runs in one process.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --durations=15

clean:
	rm -rf $(VENV) $(DEMO_DIR)
