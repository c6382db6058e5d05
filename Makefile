# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU build of torch is installed unless an NVIDIA GPU is present: an unpinned
# `torch` pulls a multi-GB CUDA build on Linux, and so does a pinned one from PyPI.
# PyTorch's CPU wheel index is asked first (its "+cpu" builds win over PyPI's of the
# same version); where it cannot be reached, a local CPU wheel (pip's find-links) or
# PyPI's is used. Override on other machines, e.g. TORCH_CPU_SPEC="torch==2.5.1".
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_GPU_SPEC ?= torch>=2.2
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
# macOS wheels of torch hold no CUDA (and Intel Macs have none past torch 2.2): the normal range there too.
UNAME ?= $(shell uname -s)
TORCH_FROM_RANGE := $(HAS_NVIDIA)
ifeq ($(UNAME),Darwin)
TORCH_FROM_RANGE := yes
endif

.PHONY: demo test bench venv clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(TORCH_FROM_RANGE),yes)
	$(PIP) install -q "$(TORCH_GPU_SPEC)"
else
	$(PIP) install -q --no-deps --retries 1 --extra-index-url "$(TORCH_CPU_INDEX)" "$(TORCH_CPU_SPEC)"
	$(PIP) install -q "$(TORCH_CPU_SPEC)"
	@$(PY) -W ignore -c "import torch; torch.version.cuda and print('warning: a CUDA build of torch', torch.__version__, 'was installed on a machine without an NVIDIA GPU: set TORCH_CPU_SPEC/TORCH_CPU_INDEX (Makefile)')"
endif
	touch $@

# The later installs keep the torch installed above (a constraint on its version): a pyproject
# bound it no longer met would otherwise have pip fetch PyPI's, a CUDA build on Linux.
$(VENV)/torch-constraint.txt: $(VENV)/.torch
	$(PY) -W ignore -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $@

$(VENV)/.installed: $(VENV)/.torch $(VENV)/torch-constraint.txt pyproject.toml
	$(PIP) install -q -e . -c $(VENV)/torch-constraint.txt
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]" -c $(VENV)/torch-constraint.txt
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/deconv3d demo -o demo_output

# The suite runs in TEST_WORKERS processes (pytest-xdist): 2 took it from 353 s to 202 s on a 2-core
# machine (each test runs torch on one thread). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= 2

test: $(VENV)/.dev
	$(PY) -m pytest -q -n $(TEST_WORKERS)

bench: $(VENV)/.installed
	$(PIP) install -q -e ".[bench]" -c $(VENV)/torch-constraint.txt || $(PIP) install -q psutil
	$(PY) benchmarks/bench_rl.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
