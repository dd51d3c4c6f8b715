# The two commands of the README: `make book` and `make test`. Both create .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
MATHJAX := 3.2.2
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml Makefile | sha256sum | cut -c1-12)

.PHONY: book test unit coverage smoke-book install clean

$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	# Quantus (the sanity check's reference in tests/test_sanity.py) without its declared opencv-python: grad-cam's
	# opencv-python-headless provides the same cv2; its other dependencies are in requirements.txt
	$(BIN)/python -m pip install -q --no-deps quantus==0.6.0
	# MathJax served from the built book (offline reading), from the npm registry
	npm install --no-audit --no-fund --silent --prefix $(VENV)/npm mathjax@$(MATHJAX)
	# Chromium for the browser test of the built book (Debian package; needs root or sudo)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; } || echo "apnb: could not install chromium; the browser test will be skipped (set APNB_REQUIRE_BROWSER=1 to fail instead)"
	# bubblewrap isolates each graded submission of `apnb course grade` (Debian package; needs root or sudo)
	command -v bwrap >/dev/null || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q bubblewrap; } || echo "apnb: could not install bubblewrap; course grading will refuse untrusted submissions unless run as root (then as the user nobody)"
	rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

book: $(STAMP)  ## execute every notebook at the demo profile and build the HTML book
	$(BIN)/apnb book --profile demo

smoke-book: $(STAMP)
	$(BIN)/apnb book --profile smoke

# two pytest-xdist workers, one core each (tests/conftest.py); notebooks and the smoke book run once per session
XDIST := -n 2

test: $(STAMP)  ## unit tests, every notebook at the smoke profile, paper-dry notebooks, the smoke book build
	$(BIN)/python -m pytest -q $(XDIST) --durations=40

unit: $(STAMP)  ## the unit tests alone (no notebook, book or slow subprocess test)
	$(BIN)/python -m pytest -q $(XDIST) -m "unit and not slow" --durations=15

coverage: $(STAMP)  ## make test under coverage (kernels and subprocesses included): line report of apnb/
	# the smoke and paper-dry runs and data are test outputs: removed, so that every path runs again; networks
	# go to a store of their own (build/store, which the demo book uses, is left alone)
	rm -rf build/coverage build/runs/smoke build/runs/paper-dry build/data/synth-voc-smoke \
	  build/data/synth-imagenet-smoke build/data/paper-dry && mkdir -p build/coverage
	APNB_STORE=$(CURDIR)/build/coverage/store APNB_COVERAGE_DATA=$(CURDIR)/build/coverage/.coverage \
	  COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(BIN)/python -m pytest -q $(XDIST) -p no:cacheprovider
	$(BIN)/coverage combine -q --data-file=build/coverage/.coverage build/coverage
	$(BIN)/coverage json -q -i --include='apnb/*' --data-file=build/coverage/.coverage -o build/coverage/coverage.json
	$(BIN)/coverage report -i --include='apnb/*' --data-file=build/coverage/.coverage | tail -1

clean:
	rm -rf build
