# The runbook's entry points. `make run` and `make test` are the two commands;
# both set up what is missing first (scripts/setup.sh, idempotent).
PARAMS ?= parameters/lab.yaml
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup run check test teardown images jupyter bench fleet

# with the lab's parameters, setup also builds the lab images (in the background, beside the
# Python environment); a real host's parameter file builds none
setup:
	@bash scripts/setup.sh --params $(PARAMS)

run: setup
	$(PY) -m helpers run --params $(PARAMS)

# every stage planned and shown, nothing changed (a run folder of its own)
check: setup
	$(PY) -m helpers run --params $(PARAMS) --check

test:
	@bash scripts/setup.sh --test --params $(PARAMS)
	$(PY) -m pytest $(PYTEST_ARGS)

teardown: setup
	$(PY) -m helpers run --params $(PARAMS) --stages 99

images: setup
	$(PY) -m helpers.lab.images

jupyter: setup
	.venv/bin/jupyter lab --allow-root --notebook-dir=notebooks

bench: setup
	$(PY) scripts/bench_lab.py

# the runbook on every host of an Ansible inventory, in parallel, with one index (README: "A fleet")
# e.g. make fleet INVENTORY=fleet/hosts.yml FLEET_ARGS="--stages 01"
INVENTORY ?=
FLEET_ARGS ?=
fleet: setup
	@test -n "$(INVENTORY)" || { echo "ERROR: give the inventory: make fleet INVENTORY=path/to/hosts.yml [FLEET_ARGS='--stages 01']"; exit 2; }
	$(PY) -m helpers fleet --inventory $(INVENTORY) --params $(PARAMS) $(FLEET_ARGS)
