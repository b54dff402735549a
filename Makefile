# Two commands do all the set-up on a fresh machine:
#   make demo   builds the offline demo dataset and runs the main job on it
#   make test   runs the test suite (own MongoDB, real models, real images)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lookalike-installed
PYTEST_ARGS ?=

.PHONY: setup demo test app clean

setup: $(STAMP)
	@$(PY) -m lookalike.database

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "lookalike needs Python 3.10-3.12 (found %d.%d): make PYTHON=python3.11 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/lookalike demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# Opens the demo dataset in the App with this plugin loaded.
app: setup
	FIFTYONE_PLUGINS_DIR=$(CURDIR) $(VENV)/bin/fiftyone app launch lookalike-demo --address 127.0.0.1 --wait -1

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
