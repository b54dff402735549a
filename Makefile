# Two commands do all the set-up on a fresh machine:
#   make demo   builds the offline demo dataset and runs the main job on it
#   make test   runs the default tier of the tests (own MongoDB, real models, real
#               images; no test starts a process of its own: a few minutes)
#   make test-system  the tests that start processes: CLIs killed and raced, workers,
#               App servers, the browser, the wheel install (CI runs both tiers)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lookalike-installed
PYTEST_ARGS ?=
# Test files run in parallel worker processes (pytest-xdist), a file's tests in one
# worker (its module fixtures built once); each worker starts its own mongod. Two
# workers nearly halve a tier on 2 cores: much of a test is waiting on processes and
# the database. TEST_WORKERS=0 runs a tier in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
# The App serves its plugins directory over HTTP: it holds a copy of the
# plugin's files only, never the checkout itself.
PLUGINS_DIR := $(CURDIR)/build/plugins

.PHONY: setup demo test test-system test-all browser screenshots plugin worker app clean

setup: $(STAMP)
	@$(PY) -m lookalike.core.database

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 10) <= v <= (3, 12) else "lookalike needs Python 3.10-3.12 (found %d.%d): make PYTHON=python3.11 ..." % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/lookalike demo

test: setup
	$(PY) -m pytest -m "not system" $(XDIST) $(PYTEST_ARGS)

# The browser walks run first and alone: beside a second worker's load the App's forms
# re-render slower than Chromium types into them (CI at stops 36 and 37 lost the folder
# typed into "Match new images"); they ran alone, and passed, before the gate went parallel.
ALONE_TESTS := tests/test_browser.py

test-system: setup browser
	$(PY) -m pytest -m system $(ALONE_TESTS) $(PYTEST_ARGS)
	$(PY) -m pytest -m system $(XDIST) --ignore=$(ALONE_TESTS) $(PYTEST_ARGS)

test-all: test test-system

# The browser tests drive Debian's chromium (Playwright's own download cannot
# work offline). Installed when missing and we are root (CI is); otherwise those
# tests are skipped and say why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests (apt-get) ..."; \
		(apt-get install -y -q chromium >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)) || \
		echo "could not install chromium: the browser tests will be skipped"; \
	else echo "no /usr/bin/chromium and not root: the browser tests will be skipped"; fi

# Refreshes the README's screenshots from the browser tests.
screenshots: setup browser
	rm -rf docs/screenshots
	LOOKALIKE_SCREENSHOTS_DIR=$(CURDIR)/docs/screenshots $(PY) -m pytest tests/test_browser.py -v
	rm -f docs/screenshots/retry-*.png docs/screenshots/timed-out.png
	$(PY) -c 'import glob; from PIL import Image; [Image.open(p).convert("RGB").quantize(256).save(p, optimize=True) for p in glob.glob("docs/screenshots/*.png")]'

# build/plugins/lookalike/: fiftyone.yml, requirements.txt, plugin/, assets/ only.
plugin: setup
	@$(VENV)/bin/lookalike plugin install --dir $(PLUGINS_DIR)

# What the App and its workers run with: our plugin; the App may queue jobs for
# `make worker` (FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS); no "oldest supported MongoDB"
# warning on every start for the bundled mongod, which the tests run against
# (FIFTYONE_DATABASE_VALIDATION; the lookalike CLI filters that one warning itself).
FO_ENV := FIFTYONE_PLUGINS_DIR=$(PLUGINS_DIR) FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS=true FIFTYONE_DATABASE_VALIDATION=false

# Runs jobs queued from the App (train, embed, ... with "delegated" on).
worker: plugin
	$(FO_ENV) $(VENV)/bin/fiftyone delegated launch

# Opens the demo dataset in the App with this plugin loaded.
app: plugin
	$(FO_ENV) $(VENV)/bin/fiftyone app launch lookalike-demo --address 127.0.0.1 --wait -1

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
