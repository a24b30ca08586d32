# Hearth. `make run` sets everything up and serves; `make test` runs the whole suite. Both reuse .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.hearth-installed
UNAME_S := $(shell uname -s)
UNAME_M := $(shell uname -m)
# Every backend that runs on this platform: MLX runs on Apple silicon and on Linux CPUs.
EXTRAS := dev
ifeq ($(UNAME_S),Linux)
EXTRAS := dev,mlx
endif
ifeq ($(UNAME_S)-$(UNAME_M),Darwin-arm64)
EXTRAS := dev,mlx
endif

.PHONY: install run test lint bench worker clean-venv

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(INSTALLED)

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py install_demo_model
	$(PY) manage.py bootstrap_admin
	$(PY) manage.py serve

worker: install
	$(VENV)/bin/celery -A config worker -Q generation --pool solo --concurrency 1 --loglevel INFO

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
