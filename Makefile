# The verbs people reach for. `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo test test-fast lint format bench train data test-model clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c requirements.lock ".[dev]"
	touch $@

install: $(VENV)/.installed

# Embedded mode: SQLite + Celery filesystem broker, web + worker + beat in one terminal.
demo: install
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	DEBUG=1 $(PY) manage.py register_model --bundled --if-no-production
	DEBUG=1 $(PY) manage.py register_model ml/bundled/cxr-compact.keras --name cxr-compact-v1
	DEBUG=1 $(PY) manage.py import_dataset tests/fixtures/images/manifest.csv --layout generic
	@echo "Open http://$${DEMO_HOST:-127.0.0.1}:$${DEMO_PORT:-8000}/ and log in with a demo user above (Ctrl-C stops)."
	DEBUG=1 $(VENV)/bin/honcho -f Procfile.demo start

# Every test, on $(TEST_PROCS) processes (pytest-xdist; each has its own test database,
# state folder and Redis key prefix). The tests that start Celery workers or a browser
# run one after another on one of them. TEST_PROCS=0: one process, no xdist.
TEST_PROCS ?= 2
PYTEST_XDIST = $(if $(filter-out 0,$(TEST_PROCS)),-n $(TEST_PROCS) --dist loadgroup)
test: install
	$(VENV)/bin/pytest $(PYTEST_XDIST)

# Quick feedback: no Celery worker processes, no browser (markers `worker`, `browser`).
test-fast: install
	$(VENV)/bin/pytest -m "not worker and not browser" $(PYTEST_XDIST)

# The same checks as .pre-commit-config.yaml (`$(VENV)/bin/pre-commit install` runs them
# before each commit). DEBUG=1: the mypy Django plugin imports the settings.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy
	$(VENV)/bin/djlint templates --lint
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (figures, not timed tests): inference, explanations, API upload -> prediction
# with 1 and 2 real workers, read API under 20 clients, training per epoch, worker memory.
# Writes bench/results.json and bench/results.md. The full explanation study
# (faithfulness, randomisation checks) is `$(PY) -m bench.explain`.
bench: install
	CXR_SHARED_DATASETS=$${CXR_SHARED_DATASETS:-$(SHARED)} $(PY) -m bench

# Reproduce the bundled default model (ml/bundled/cxr-lungs/: preprocessing v2 on the lung
# fields of the bundled lung U-Net, trained against shortcuts) from the shared data sets.
# The previous model (ml/bundled/cxr-compact.keras, v1, three sources) stays for comparison:
# `make train-v1` reproduces it.
SHARED ?= ../shared/datasets
CXR_DATA = $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
	$(SHARED)/adult-pneumonia
TRAIN_ARGS ?= --epochs 60 --patience 10 --seed 0 --quiet
SHORTCUT_ARGS ?= --preprocessing 2 --balanced-sampling --acquisition-augment --min-epochs 15
train: install
	$(PY) -m ml train --data $(CXR_DATA) --out ml/bundled/cxr-lungs --name cxr-lungs \
		$(SHORTCUT_ARGS) --cache var/cache/train $(TRAIN_ARGS)

.PHONY: train-v1
train-v1: install
	$(PY) -m ml train --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out ml/bundled --name cxr-compact --no-shortcut-tests $(TRAIN_ARGS)

# Reproduce the bundled lung segmentation U-Net (ml/bundled/lung-unet.keras, its card and
# ml/bundled/lungs-report/) from the lungVAE masks of covid-chestxray (~10 min on 2 cores).
LUNGS_ARGS ?= --epochs 60 --patience 12 --seed 0 --quiet
.PHONY: train-lungs
train-lungs: install
	$(PY) -m ml lungs train --covid $(SHARED)/covid-chestxray --out ml/bundled \
		--others $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal $(SHARED)/adult-pneumonia \
		$(LUNGS_ARGS)

# Dataset summary: images kept per source and class, rows excluded and why.
data: install
	$(PY) -m ml data $(CXR_DATA)

# The tiny model the tests use (fitted on the 18 fixture images).
test-model: install
	$(PY) -m ml.models.tiny

clean:
	rm -rf var .pytest_cache

# The evaluation report (docs/evaluation.md): training study, heatmap study, lung check.
.PHONY: study
study: install
	$(PY) -m ml study --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out docs/study --title "Training study: compact CNN on the shared data" --quiet
	$(PY) -m ml study --plan shortcut --data $(CXR_DATA) --out docs/study-shortcuts \
		--cache var/study-cache --title "Shortcut study: what makes the classifier read the lungs" --quiet
	$(PY) -m ml heatmap-study --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out docs/heatmap-study --per-source 30 --sanity-images 6 --quiet
	$(PY) -m ml lung-check --covid $(SHARED)/covid-chestxray --out docs/heatmap-study
