# `make train` / `make test` create .venv on first use (about 3 minutes), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train sample demo browser test test-fast lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev,demo]'
	touch $@

setup: $(VENV)/.installed

train: setup                 ## fine-tune the embedded default (make train ARGS="trainer.max_steps=600")
	$(PY) train.py $(ARGS)

sample: setup                ## sample a pipeline (make sample ARGS="guidance=color")
	$(PY) sample.py $(ARGS)

demo: setup                  ## the guided-sampling web page on http://127.0.0.1:7860 (make demo ARGS="port=7861")
	$(PY) demo.py $(ARGS)

browser:                     ## Debian's headless Chromium and ChromeDriver for the browser tests
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint                   ## the whole suite, slow end-to-end runs included (as CI), 2 workers
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist worksteal

test-fast: setup             ## everything but the slow end-to-end runs
	$(VENV)/bin/pytest -q -m "not slow" -n 2 --dist worksteal

bench: setup                 ## CPU benchmarks; each prints its ratio last
	for b in $(filter-out bench/gpu_peer.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done
