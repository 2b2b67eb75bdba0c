# `make train` / `make test` create .venv on first use (about 3 minutes), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: setup train sample test test-fast lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

train: setup                 ## fine-tune the embedded default (make train ARGS="trainer.max_steps=600")
	$(PY) train.py $(ARGS)

sample: setup                ## sample a pipeline (make sample ARGS="guidance=color")
	$(PY) sample.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint                   ## the whole suite, slow end-to-end runs included (as CI)
	$(VENV)/bin/pytest -q -p no:cacheprovider

test-fast: setup             ## everything but the slow end-to-end runs
	$(VENV)/bin/pytest -q -m "not slow"

bench: setup                 ## CPU benchmarks; each prints its ratio last
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done
