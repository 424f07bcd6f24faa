# e3fast: `make demo` and `make test` are the quick start; both create .venv when absent.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-interrupts bench experiments clean

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
