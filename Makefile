# ssdfast: two commands on a fresh machine.
#   make demo   installs everything, builds the kernels, then trains/evaluates/detects on a synthetic set
#   make test   installs everything, builds the kernels (CUDA ones compiled and linked even without a GPU), runs the tests
#   make test-quick   the tests not marked slow (the edit loop)
# Other targets: make install (venv + build; EXTRAS=export adds an extra's packages), make bench (benchmarks -> benchmarks/results + README table),
#   make gpu (on a GPU machine with torch installed, no venv, no network: build, CUDA tests, training ladder,
#   data-fed step, profile, compiled step, inference, ops, sanitizers, in that order within BUDGET seconds (default 540)
#   -> benchmarks/results/<gpu>.json; see tools/gpu_check.py), make clean.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

# The real CUDA toolkit (/usr/local/bin/nvcc may be a wrapper that misleads torch's guess).
CUDA_HOME ?= /usr/local/cuda
export CUDA_HOME
# Compile the CUDA kernels whenever a toolkit is there, GPU or not (CI checks they compile and link).
FORCE_CUDA ?= $(shell test -x $(CUDA_HOME)/bin/nvcc && echo 1 || echo 0)
export FORCE_CUDA
# Without a GPU, build for Hopper only (short builds); with one, torch targets the GPU it sees.
ifeq ($(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu),)
TORCH_CUDA_ARCH_LIST ?= 9.0
export TORCH_CUDA_ARCH_LIST
endif
MAX_JOBS ?= $(shell nproc)
export MAX_JOBS
# CPU speed: keep freed tensor memory in the process instead of returning it to the OS every step
# (glibc otherwise mmaps/munmaps every large tensor: ~1.6x slower CPU training steps, measured).
export MALLOC_MMAP_THRESHOLD_ ?= 4294967296
export MALLOC_TRIM_THRESHOLD_ ?= 4294967296

.PHONY: install test test-quick demo bench gpu gpu-wheels clean
# make gpu uses the python that already has torch (no venv).
GPU_PYTHON ?= python3

$(VENV)/.deps: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(shell find csrc -type f)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	$(PY) -c "import ssdfast.ops as o; print('ssdfast._C backend: cpu', o.backend('cpu'), '| cuda kernels registered:', o._COMPILED[('nms', 'cuda')])"
	touch $@

# make install EXTRAS=export (several: EXTRAS=export,dali) adds the packages of pyproject.toml's extras,
# by name, to the venv. pip, given `.[export]`, would build ssdfast._C again, in an isolated environment
# without this Makefile's FORCE_CUDA: minutes, and the CUDA kernels gone.
EXTRAS ?=
install: $(VENV)/.built
ifneq ($(strip $(EXTRAS)),)
	@packages=$$($(PY) -c 'import sys, tomllib; \
	  extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]; \
	  unknown = [e for e in sys.argv[1].split(",") if e not in extras]; \
	  sys.exit("EXTRAS: no extra %r in pyproject.toml (%s)" % (unknown[0], ", ".join(extras))) if unknown \
	  else print(*[p for e in sys.argv[1].split(",") for p in extras[e]])' '$(EXTRAS)') \
	  && echo "$(PY) -m pip install $$packages" && $(PY) -m pip install --quiet $$packages
endif

# Two pytest-xdist workers (one thread each, see tests/conftest.py): the subprocess-heavy tests keep both
# cores busy. worksteal: an idle worker takes tests from the busy one. TEST_JOBS=0 runs in one process.
TEST_JOBS ?= 2
XDIST = $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist worksteal)

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest tests -q -ra $(XDIST)
	@# The GPU check's smoke run (single-threaded, mostly collecting tests) goes on beside the benchmarks' smoke
	@# run: both only check that things run, nothing is timed. Its output is printed after theirs.
	@$(PY) tools/gpu_check.py --smoke > .gpu_check_smoke.log 2>&1 & smoke=$$!; \
	  $(PY) -m pytest benchmarks -q --benchmark-disable $(XDIST); bench=$$?; \
	  wait $$smoke; check=$$?; cat .gpu_check_smoke.log; rm -f .gpu_check_smoke.log; \
	  echo "benchmarks smoke: exit $$bench; gpu_check --smoke: exit $$check"; test $$bench -eq 0 && test $$check -eq 0

# The edit loop (a few minutes): everything not marked slow (the end-to-end runs of the tools).
test-quick: install
	$(PY) -m pytest tests -q -ra -m "not slow" $(XDIST)

demo: install
	$(PY) tools/demo.py

bench: install
	$(PY) -m pytest benchmarks --benchmark-only --benchmark-json=benchmarks/results/latest.json -q
	$(PY) benchmarks/report.py benchmarks/results/latest.json

BUDGET ?= 540
# The GPU machine may lack packages and network (the lent H200 has no pycocotools): `make gpu-wheels` here puts
# their wheels for its Python in .whl/ (git-ignored; carry it there), and `make gpu` installs them first.
GPU_WHEELS ?= pycocotools==2.0.11
GPU_WHEEL_PYTHON ?= 3.12
gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PYTHON) --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)

gpu:
	if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile \
	  --upgrade --target .gpu_site .whl/*.whl || exit 1; fi; \
	PYTHONPATH=$(CURDIR)/.gpu_site$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PYTHON) tools/gpu_check.py --budget $(BUDGET)

clean:
	rm -rf build *.egg-info ssdfast/*.so $(VENV) demo_output gpu_check_logs .gpu_site
