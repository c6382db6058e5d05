# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU build of torch is installed unless an NVIDIA GPU is present: an unpinned
# `torch` pulls a multi-GB CUDA build on Linux. Override on other machines, e.g.
# TORCH_CPU_SPEC="torch==2.5.1" PIP_EXTRA_INDEX_URL=<your CPU wheel index>.
TORCH_CPU_SPEC ?= torch==2.13.0
TORCH_GPU_SPEC ?= torch>=2.2
HAS_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)

.PHONY: demo test bench venv clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_NVIDIA),yes)
	$(PIP) install -q "$(TORCH_GPU_SPEC)"
else
	$(PIP) install -q "$(TORCH_CPU_SPEC)"
endif
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/deconv3d demo -o demo_output

test: $(VENV)/.dev
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PIP) install -q -e ".[bench]" || $(PIP) install -q psutil
	$(PY) benchmarks/bench_rl.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
