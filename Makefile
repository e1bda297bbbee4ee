# The two commands: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR := runs/demo

.PHONY: demo test clean-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall only when pyproject.toml changes (torch is a 5.5 GB build: never fetch it twice).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,serve]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/imcap demo --out $(DEMO_DIR)

test: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/python tools/gen_option_docs.py --check
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf $(DEMO_DIR)
