# e3fast: `make demo` and `make test` are the quick start; both create .venv when absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-interrupts bench experiments check-deps clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/e3fast demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -x tests --benchmark-disable -p no:cacheprovider

# every 50 ms over the first 3 s, SIGINT and SIGTERM, gen-trace/replay/mc/demo, cold Numba cache
test-interrupts: $(STAMP)
	E3FAST_INTERRUPT_SWEEP=1 $(BIN)/python -m pytest -q tests/test_interrupts.py -s --benchmark-disable -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python -m pytest tests/bench --benchmark-only --benchmark-autosave --benchmark-group-by=group

experiments: $(STAMP)
	$(BIN)/python experiments/run_all.py

# The suite on the newest dependencies setup.py allows, in a fresh venv (.venv-check) with an
# empty Numba cache; PINS='numba==0.60.0 llvmlite==0.43.0' checks other allowed versions instead.
CHECK := .venv-check
check-deps:
	rm -rf $(CHECK)
	$(PYTHON) -m venv $(CHECK)
	$(CHECK)/bin/python -m pip install -q --upgrade pip
	$(CHECK)/bin/python -m pip install -q '.[dev]' $(PINS)
	$(CHECK)/bin/python -m pip list 2>/dev/null | grep -i -E '^(numba|llvmlite|numpy|h5py|scipy|dask) '
	E3FAST_TRY_NUMBA=1 NUMBA_CACHE_DIR=$(CURDIR)/$(CHECK)/numba-cache \
	    $(CHECK)/bin/python -m pytest -q -x tests --benchmark-disable -p no:cacheprovider

clean:
	rm -rf $(VENV) $(CHECK) build *.egg-info .pytest_cache
