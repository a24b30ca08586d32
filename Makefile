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
# llama.cpp is compiled for this CPU, but without its AMX kernels: on our CI machines (Xeon VMs that list AMX
# and grant the tile permission) ggml's AMX matmul dies with SIGILL on the first quantized model (gdb:
# ggml_backend_amx_mul_mat). A CMAKE_ARGS of your own (e.g. -DGGML_CUDA=on) is added after these.
LLAMA_CMAKE_ARGS :=
ifeq ($(UNAME_S)-$(UNAME_M),Linux-x86_64)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMA_CMAKE_ARGS := -DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"
endif

.PHONY: install run test lint bench worker converter puller clean-venv

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# The CPU build of PyTorch; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# llama-cpp-python is compiled here, never taken from pip's wheel cache (a wheel built with other flags).
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS) $(CMAKE_ARGS)' $(PY) -m pip install --quiet --no-cache-dir \
		"$$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)"
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $(INSTALLED)

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py install_demo_model
	$(PY) manage.py bootstrap_admin
	$(PY) manage.py serve

worker: install
	$(VENV)/bin/celery -A config worker -Q generation --loglevel INFO

converter: install
	$(VENV)/bin/celery -A config worker -Q conversions --concurrency 1 --hostname converter@%h --loglevel INFO

puller: install
	$(VENV)/bin/celery -A config worker -Q pulls --concurrency 1 --hostname puller@%h --loglevel INFO

test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: install
	$(PY) -m bench

clean-venv:
	rm -rf $(VENV)
