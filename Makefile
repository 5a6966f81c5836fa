# Two entry points, both from a fresh clone: `make demo` and `make test` (`make test-fast` for a quick loop).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,lightning,hf,optuna,ray,tensorboard
DEMO_EXTRAS ?= lightning,tensorboard
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: demo test test-fast lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# CPU torch is pinned by the constraints file, not by the package (a plain `torch` pulls CUDA wheels).
$(VENV)/.installed: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[$(EXTRAS)]"
	touch $@

# The demo needs Lightning and TensorBoard only: a shorter first install than the test suite's.
$(VENV)/.installed-demo: pyproject.toml constraints/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints/cpu.txt -e ".[$(DEMO_EXTRAS)]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/python examples/quickstart.py

test: $(VENV)/.installed
	$(PYTEST)

# Leaves out the real Trainer fits and the multi-process tests (markers in pyproject.toml, tests/conftest.py).
test-fast: $(VENV)/.installed
	$(PYTEST) -m "not trainer and not multiprocess"

# mypy reads the package as it is installed: scaleforecast/ with callbacks/ and integrations/ inside it, as
# links (setuptools maps them there with package-dir, which mypy cannot follow).
TYPECHECK := build/typecheck

lint: $(VENV)/.installed
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/scaleforecast
	ln -s $(CURDIR)/scaleforecast/*.py $(TYPECHECK)/scaleforecast/
	ln -s $(CURDIR)/callbacks $(TYPECHECK)/scaleforecast/callbacks
	ln -s $(CURDIR)/integrations $(TYPECHECK)/scaleforecast/integrations
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p scaleforecast
