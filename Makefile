# Two commands do all the set-up: `make demo` and `make test`. Each creates or refreshes .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= test,distributed,ml
# Kept between runs so the 1-3 minute first Warp compile is paid once per machine.
export WARP_CACHE_PATH ?= $(CURDIR)/.cache/warp
export PYTHONHASHSEED := 0
comma := ,
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)-$(subst $(comma),_,$(EXTRAS))

.PHONY: venv demo test test-all lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps robomimic==0.3.0
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(PY) -m worldgen.apps.demo

test: venv
	$(PY) -m pytest -q

test-all: venv
	$(PY) -m pytest -q -m ""

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf data/runs data/demo .pytest_cache
