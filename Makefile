# kaifong — two commands on a fresh machine:
#   make run    create the virtualenv, install, start the embedded stack (broker, Redis, worker)
#   make test   install what the tests need and run the whole suite (lint, types, tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kaifong-installed

.PHONY: run test install lint typecheck pytest clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The demo: the embedded stack plus the simulated city (23,000 units reporting every 30 s,
# ~120 incidents an hour). Ctrl-C stops everything.
run: install
	$(BIN)/kaifong up --simulate --sim-args "--heartbeat-interval 30"

lint: install
	$(BIN)/ruff check schemas streams agents tests

# mypy cannot follow setuptools' package-dir mapping, so it checks a symlinked kaifong/ tree.
typecheck: install
	mkdir -p .mypy-tree/kaifong
	for d in schemas streams agents; do ln -sfn ../../$$d .mypy-tree/kaifong/$$d; done
	cd .mypy-tree && ../$(BIN)/mypy --config-file ../pyproject.toml --namespace-packages \
		--explicit-package-bases -p kaifong.schemas -p kaifong.streams -p kaifong.agents
	cd .mypy-tree && PYTHONPATH=. ../$(BIN)/lint-imports --no-cache ../pyproject.toml

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) .mypy-tree build *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts
