# Two entry points, both from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,lightning,hf,optuna,ray,tensorboard

.PHONY: demo test lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU torch is pinned by the constraints file, not by the package (a plain `torch` pulls CUDA wheels).
$(VENV)/.installed: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
