# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data monailabel-env chromium demo benchmark bench test lint format clean

setup: $(STAMP)

# torch 2.13.0 (CPU) goes in first: the project's `torch>=2.8` is then already satisfied. The `ui` extra is
# the MLflow UI / tracking server (`mlflow ui`, see README "Looking at runs"). dynamic-network-architectures
# (the `resenc` encoder, nnssl / OpenMind ResEnc-L) goes in with --no-deps, which an extra cannot say: it
# requires timm, whose torchvision would replace torch 2.13.0 CPU; its residual encoder imports no timm.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ui]'
	$(PY) -m pip install -q --no-deps dynamic-network-architectures==0.4.4
	touch $@

data: setup
	$(PY) tools/prepare_data.py

# MONAI Label 0.8.5 cannot import beside torch 2.13.0 CPU: it gets its own venv (8.2 GB, ~4 min once).
monailabel-env:
	bash tools/monailabel_env.sh

demo: data
	$(PY) tools/demo.py

# The small benchmark study (tools/studies/benchmark_small.json: SimMIM, SwinUNETR-SSL, scratch × 1, 2 shots
# × 3 seeds) and its report; resumable: a finished cell is never rerun.
benchmark: data
	$(PY) -m common.study run tools/studies/benchmark_small.json --report

# Performance benchmarks of every bundle at its smoke size: runs/bench/bench.md and bench.csv (see README).
bench: data
	$(PY) tools/bench.py

# Headless Chromium (Debian package) for the MLflow UI screenshot test: installed when missing and root with
# apt-get (about 25 s once); otherwise that test skips and says why.
chromium:
	@if command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null; \
	else echo "chromium: absent, and installing it needs root and apt-get; the MLflow UI screenshot test will skip"; fi

test: data monailabel-env chromium
	$(PY) -m pytest -q --durations=20

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf bundles/*/models bundles/*/eval .pytest_cache
