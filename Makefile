# Every target sets itself up in .venv: `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= .cache/demo-checkpoint
# maira_sae is assembled from several top-level folders (package-dir). Tools that walk a
# package's folder (lint-imports, IDEs) need one tree: a tree of links to those folders, put on
# the venv's path, so Python imports the working tree through it and new files show at once.
# It lives inside the venv, so it is deleted only together with the install stamp.
IMPORT_TREE := $(CURDIR)/$(VENV)/import-tree

.PHONY: install demo test test-fast lint lint-imports wheel-smoke proto clean bench bench-quick soak \
	contract contract-baseline

# torch comes with the server extra, pinned there (pyproject.toml) and nowhere else.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev]'
	rm -rf $(IMPORT_TREE) && mkdir -p $(IMPORT_TREE)/maira_sae
	ln -s $(CURDIR)/protos/maira_sae/__init__.py $(CURDIR)/protos/maira_sae/v1 \
		$(CURDIR)/sae $(CURDIR)/server $(CURDIR)/client $(IMPORT_TREE)/maira_sae/
	echo $(IMPORT_TREE) > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/maira_sae_tree.pth"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m maira_sae.server.demo.tour --checkpoint $(DEMO_DIR)

test: install lint-imports
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# The tests not marked slow: under 90 s on 2 cores (README, "Tests").
test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

lint-imports: install
	$(VENV)/bin/lint-imports

# The tests import the working tree; this builds the wheel, installs it with the server extra in
# a clean venv, imports every module and runs both commands' --help (.ci/wheel_smoke.py).
wheel-smoke: install
	$(PY) .ci/wheel_smoke.py

bench: install
	$(PY) -m bench.run_cpu --out .cache/bench/cpu.json

bench-quick: install
	$(PY) -m bench.run_cpu --quick

soak: install
	$(PY) bench/soak.py --duration $${SOAK_SECONDS:-600} --report .cache/soak-report.json

proto: install
	$(PY) -m maira_sae.server.service.protogen

# The contract as other languages take it (README, "The contract in other languages"): buf lint
# (STANDARD + COMMENTS, protos/buf.yaml), buf breaking against the last release's image
# (protos/v1-release.binpb), then the Node (TypeScript) example client, every RPC and every
# error class, against a live demo server. buf and the client's packages come from npm, pinned
# by examples/node/package-lock.json.
NODE_EXAMPLE := examples/node
NODE_STAMP := $(NODE_EXAMPLE)/node_modules/.installed-stamp
BUF := $(NODE_EXAMPLE)/node_modules/.bin/buf
RELEASE_IMAGE := protos/v1-release.binpb

$(NODE_STAMP): $(NODE_EXAMPLE)/package-lock.json
	cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund
	touch $(NODE_STAMP)

contract: install $(NODE_STAMP)
	$(BUF) lint protos
	$(BUF) breaking protos --against $(RELEASE_IMAGE)
	cd $(NODE_EXAMPLE) && npx tsc -p .
	.ci/contract_clients.sh

# Run at each release of the contract: the image `buf breaking` compares with from then on.
contract-baseline: $(NODE_STAMP)
	$(BUF) build protos --exclude-source-info -o $(RELEASE_IMAGE)

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache *.egg-info
