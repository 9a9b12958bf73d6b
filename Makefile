# Every target sets itself up in .venv: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .cache/demo-checkpoint

.PHONY: install demo test lint proto clean bench bench-quick soak

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch first, pinned: an open range would pull a 5 GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m maira_sae.server.tour --checkpoint $(DEMO_DIR)

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) -m bench.run_cpu --out .cache/bench/cpu.json

bench-quick: install
	$(PY) -m bench.run_cpu --quick

soak: install
	$(PY) bench/soak.py --duration $${SOAK_SECONDS:-600} --report .cache/soak-report.json

proto: install
	$(PY) -m maira_sae.server.protogen

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache *.egg-info
