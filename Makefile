# The two commands of the README: `make book` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MATHJAX := 3.2.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml Makefile | sha256sum | cut -c1-12)

.PHONY: book test smoke-book install clean

$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# MathJax served from the built book (offline reading), from the npm registry
	npm install --no-audit --no-fund --silent --prefix $(VENV)/npm mathjax@$(MATHJAX)
	# Chromium for the browser test of the built book (Debian package; needs root or sudo)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; } || echo "apnb: could not install chromium; the browser test will be skipped (set APNB_REQUIRE_BROWSER=1 to fail instead)"
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
