# Two commands for a newcomer (see README):  make demo   and   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned and installed first, deliberately (README: "Why torch is installed first").
TORCH_VERSION ?= 2.13.0
# Set to e.g. https://download.pytorch.org/whl/cpu for a CPU-only build from PyTorch's own index.
TORCH_INDEX ?=
DEMO_DIR ?= demo

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	rm -rf $(DEMO_DIR)/catalog
	$(BIN)/aef-pipeline demo-catalog $(DEMO_DIR)/catalog

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) $(DEMO_DIR)
