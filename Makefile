# Two commands on a fresh machine: `make demo` and `make test`.
# Both create or refresh .venv and install fedshield from this checkout. torch is pinned
# through constraints.txt to the CPU build that every machine of this project carries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip

.PHONY: install browser demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fedshield demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The compliance report's rendering test opens the HTML in headless Chromium (Debian's
# package). Installed here when it is missing and we may (root with apt-get); otherwise
# that one test is skipped, with the reason, unless FEDSHIELD_REQUIRE_CHROMIUM is set.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report rendering test"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; } || \
	    echo "could not install chromium: the report rendering test will be skipped"; \
	  else echo "chromium not found: the report rendering test will be skipped"; fi

test: lint typecheck browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/round_overhead.py

clean:
	rm -rf $(VENV) fedshield-demo .pytest_cache .mypy_cache .ruff_cache
