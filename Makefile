# Two newcomer commands: `make demo` (set up, then run the main job) and `make test` (set up, then run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup demo test lint chromium bench

setup: $(VENV)/.installed chromium

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build on CPU machines
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e ".[notebooks,dev,zoo,ray]"
	touch $@

# Static figure export (PNG/SVG/PDF) needs a Chromium; HTML figures work without it.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no Chromium found; figures will be HTML only. Install it (sudo apt-get install chromium) for PNG/SVG/PDF."; fi

demo: setup
	$(VENV)/bin/probes demo

# -n auto: one worker per core (pytest-xdist); --dist loadfile keeps each file's module fixtures (servers, runs)
# in one worker; --durations lists the slowest tests, to keep the suite inside CI's 15 minutes.
test: setup
	$(VENV)/bin/pytest -q -n auto --dist loadfile --durations=15

# ruff, and import-linter's layer contract (pyproject.toml): a method package importing upward fails
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) benchmarks/sampling.py
