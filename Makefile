# `make run` and `make test` each set up .venv (if needed) and then run the app / the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium

.PHONY: setup run test lint bench chromium

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

chromium:
	test -x $(CHROMIUM) || (apt-get update -q && apt-get install -y -q chromium)

run: $(STAMP)
	$(PY) -m dropinf train --demo  # the demo checkpoint: trained once, then cached
	$(PY) -m streamlit run app.py  # settings in .streamlit/config.toml (localhost:8501)

test: $(STAMP) chromium
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
