# Two commands for a newcomer: `make demo` and `make test`.
# Both create .venv on first use and install everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
OUT ?= output/demo
FRAMES ?=
ARGS ?=

.PHONY: venv demo test bench clean help

help:
	@echo "make demo [DATA=<dataset folder>] [OUT=<dir>] [FRAMES=<n>] [ARGS='...']"
	@echo "make test    # unit + integration tests (pytest)"
	@echo "make bench   # integration benchmark vs Open3D (prints a table, writes JSON)"

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	@# open3d-cpu needs libusb-1.0 from Debian.
	@if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then \
	  echo "installing libusb-1.0-0 (needed by open3d-cpu)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq libusb-1.0-0; \
	fi
	@# the live view's browser test drives Debian's chromium (Playwright downloads no browser).
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing chromium (browser test of the live view)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m neural_mapping.app.cli run $(if $(DATA),$(DATA),synthetic) --out $(OUT) $(if $(FRAMES),--max-frames $(FRAMES)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q test $(ARGS)

bench: $(STAMP)
	$(PY) bench/bench_integration.py $(ARGS)

clean:
	rm -rf output build *.egg-info .pytest_cache
