# Two commands a user needs: `make study` (the main job) and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ferlib-installed

# Study settings (override on the command line: make study DATA=../shared/data/ferplus PROFILE=cpu)
DATA    ?= data/ferplus_sample
PROFILE ?= smoke

.PHONY: venv test test-fast study lab clean-runs

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e '.[all]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The edit loop: every test but the slow, notebook, distributed and lab ones (pyproject.toml's markers), < 1 min
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not notebook and not distributed and not lab"

study: $(STAMP)
	$(BIN)/python -m ferlib study --profile $(PROFILE) --data $(DATA)

# JupyterLab on this checkout, opened at notebooks/ (the notebooks work from the repository root wherever they start);
# as root (a container) JupyterLab wants --allow-root
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks \
	    $(if $(filter 0,$(shell id -u)),--allow-root)

clean-runs:
	rm -rf runs
