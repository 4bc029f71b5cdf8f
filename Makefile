# `make run` and `make test` each set up .venv (if needed) and then run the app / the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup run test lint bench chromium peers

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

PEERS_VENV := bench/.peers-venv
PEERS_STAMP := $(PEERS_VENV)/.installed

# The peer libraries (dattri, traker, kronfluence, captum, cleanlab) live in their own venv,
# never in the app's: `make peers` installs them (once) and runs the full side-by-side benchmark.
$(PEERS_STAMP): bench/peers-requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -q -r bench/peers-requirements.txt
	touch $(PEERS_STAMP)

peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python bench/peers.py

chromium:
	test -x $(CHROMIUM) || (apt-get update -q && apt-get install -y -q chromium)

run: $(STAMP)
	$(PY) -m dropinf train --demo  # the demo checkpoint: trained once, then cached
	$(PY) -m streamlit run app.py  # settings in .streamlit/config.toml (localhost:8501)

test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports  # the layer contracts in pyproject.toml
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m ruff format --check .
