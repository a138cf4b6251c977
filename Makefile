# One command each for the main job and the tests; both create the virtual environment when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo docs test clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m workbench quickstart

docs: $(STAMP)
	$(PY) -m workbench docs

test: $(STAMP)
	$(PY) -m pytest

clean-runs:
	rm -rf runs/quickstart-*
