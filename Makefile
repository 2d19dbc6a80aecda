# mmdlib: `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PRESET  ?= tiny
DEVICE  ?= cpu
RUN_DIR ?= runs/$(PRESET)

.PHONY: setup run test unit codec bench lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# the main job: the tiny codec training run (the notebook pipeline once it exists)
run: setup
	$(BIN)/python -m mmdlib.train_codec --preset $(PRESET) --run-dir $(RUN_DIR)/codec --set device=$(DEVICE)

test: setup
	$(BIN)/python -m pytest -q tests

unit: setup
	$(BIN)/python -m pytest -q tests

bench: setup
	$(BIN)/python -m mmdlib.bench codec
	$(BIN)/python -m mmdlib.bench mmd
	$(BIN)/python -m mmdlib.bench generate

lab: setup
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf runs .pytest_cache
