# The two commands of the README: `make book` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | sha256sum | cut -c1-12)

.PHONY: book test smoke-book install clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

book: $(STAMP)  ## execute every notebook at the demo profile and build the HTML book
	$(BIN)/apnb book --profile demo

smoke-book: $(STAMP)
	$(BIN)/apnb book --profile smoke

test: $(STAMP)  ## unit tests, every notebook at the smoke profile, and the smoke book build
	$(BIN)/python -m pytest -q

clean:
	rm -rf build
