# mmdlib: `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PRESET  ?= tiny
DEVICE  ?= cpu

.PHONY: setup run test lint unit nbval browser notebooks bench experiment lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,notebooks,fad]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# the main job: the notebook pipeline 00..05 on the tiny preset (CPU, about a quarter of an hour)
run: setup
	$(BIN)/python scripts/run_pipeline.py --preset $(PRESET) --device $(DEVICE)

# what CI runs (.ci/run): the linter, the unit tests, then nbval re-executes the notebooks and compares outputs
test: lint unit nbval

lint: setup
	$(BIN)/ruff check .

unit: setup
	$(BIN)/python -m pytest -q tests

nbval: setup
	$(BIN)/python -m pytest -q --nbval --nbval-current-env notebooks

# the browser test alone (also part of `unit`): the committed notebooks rendered to HTML and checked in
# headless Chromium (needs apt-get install chromium chromium-driver); screenshots in runs/browser/
browser: setup
	$(BIN)/python -m pytest -q tests/pipeline/test_browser.py

# refresh the outputs committed with the notebooks (and figures/) from a fresh tiny run
notebooks: setup
	rm -rf runs/tiny
	$(BIN)/python scripts/run_pipeline.py --inplace

bench: setup
	$(BIN)/python -m mmdlib.bench codec
	$(BIN)/python -m mmdlib.bench mmd
	$(BIN)/python -m mmdlib.bench generate

# the sweep of the README's results: synthetic music, 4 seeds, the λ = 0 codec and 6 variants of the loss, each
# with its LMs, depth heads and samples; about 88 minutes on 2 CPU cores (PRESET=paper DEVICE=cuda on a GPU).
# Results in figures/sweep/.
# Real music: bash scripts/get_supertux_music.sh, then python -m mmdlib.experiment all --data data/external/supertux
experiment: setup
	$(BIN)/python -m mmdlib.experiment all --preset $(PRESET) $(if $(filter cuda%,$(DEVICE)),--device $(DEVICE))

lab: setup
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf runs .pytest_cache
