# Two commands do all the set-up: `make demo` and `make test`. Each creates or refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,distributed,ml,export,tracking
# Kept between runs so the 1-3 minute first Warp compile is paid once per machine.
export WARP_CACHE_PATH ?= $(CURDIR)/.cache/warp
export PYTHONHASHSEED := 0
comma := ,
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(subst $(comma),_,$(EXTRAS))

.PHONY: venv demo test test-all test-interop lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps robomimic==0.3.0
	# Warp's first compile (1-3 min) belongs to set-up, not to the first run (worldgen/sim/kernel_cache.py).
	$(PY) -m worldgen.sim.kernel_cache scenarios/push_to_target.yaml
	rm -f $(VENV)/.installed-*
	touch $@

# The main job: `worldgen run` on a shipped scenario, quick profile (minutes on 2 CPU cores). A second
# `make demo` skips every stage whose inputs are unchanged; an interrupted one resumes.
DEMO_SCENARIO ?= scenarios/push_to_target.yaml
demo: venv
	$(PY) -m worldgen.apps.cli run $(DEMO_SCENARIO) -o data/demo/$(basename $(notdir $(DEMO_SCENARIO))) --profile quick

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m "not interop"

# LeRobot 0.6.1 reads our LeRobot export with its own LeRobotDataset. It needs Python >= 3.12 and
# torch < 2.12 (a ~5 GB CUDA build from PyPI that runs on CPU), so it gets an environment of its own.
INTEROP_PY := .venv-interop/bin/python
PYTHON312 ?= $(shell pyenv root 2>/dev/null)/versions/3.12.1/bin/python
$(INTEROP_PY).installed:
	test -x $(INTEROP_PY) || $(PYTHON312) -m venv .venv-interop
	$(INTEROP_PY) -m pip install -q --upgrade pip
	$(INTEROP_PY) -m pip install -q torch==2.11.0 torchvision==0.26.0 "lerobot[dataset]==0.6.1"
	touch $@

test-interop: venv $(INTEROP_PY).installed
	$(PY) -m pytest -q -m interop -s

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf data/runs data/demo .pytest_cache
