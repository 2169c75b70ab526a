# The two commands a new user needs: `make demo` and `make test`. Each creates the environment if missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# `make demo` writes its tables to RESULTS (git-ignored runs/digits_demo by default);
# `make demo RESULTS=example_projects/digits_mlp/results` updates the committed copy.
# Extra demo flags, e.g. DEMO_ARGS="--seeds 1 --epochs 1 --min-run-time 0.05" for the quick check the tests run.
DEMO_ARGS ?=

.PHONY: demo test lint docs wheel benchmark overhead findings clean

# The installation's output goes to $(VENV)/install.log (printed in full if a step fails).
# torch comes first, pinned. Where pip's configured index serves only PyPI, Linux gets the CUDA build (several GB):
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` adds PyTorch's CPU index (or another build's index).
# Empty by default, so a machine whose pip is set up with a local CPU wheel asks no other host.
# The dev extra holds Triton too: its interpreter (TRITON_INTERPRET=1) runs the GPU kernels' tests on the CPU.
TORCH_INDEX ?=
$(STAMP): pyproject.toml setup.py
	@echo "Setting up $(VENV): torch 2.13.0 (CPU), this package and its C++ kernels"
	@echo "(a few minutes, once; log: $(VENV)/install.log)"
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	@( $(BIN)/pip install -q --upgrade pip \
	  && $(BIN)/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) \
	  && $(BIN)/pip install -q "setuptools>=77" wheel ninja \
	  && $(BIN)/pip install -q --no-build-isolation -e ".[dev,docs]" \
	) > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

demo: OUT = $(or $(RESULTS),runs/digits_demo)
demo: $(STAMP)
	@echo "Training and timing dense, SRigL, RigL and 2:4 on this CPU; tables go to $(OUT)"
	@$(BIN)/python -m example_projects.digits_mlp.demo --out $(OUT) $(DEMO_ARGS)

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 -q

# ruff (lint and format) and mypy, as .ci/run checks them (rules in pyproject.toml).
lint: $(STAMP)
	PYTHON=$(BIN)/python bash scripts/lint.sh

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# A wheel in dist/ carrying the CPU kernels of every instruction set of this architecture, compiled against
# .venv's torch (it fails if one is missing): install it beside that same torch version (the kernels record
# it and are not loaded under another, see docs/acceleration.md). tests/test_packaging.py installs it into a
# fresh venv.
wheel: $(STAMP)
	$(BIN)/python scripts/build_wheel.py dist

# Results go to RESULTS (git-ignored benchmark_results/ by default); `make benchmark RESULTS=docs/assets`
# regenerates the committed CSVs, plots and docs/benchmarks.md.
# BENCH_ARGS are added to both sweeps, e.g. BENCH_ARGS="--config configs/benchmark_smoke.yaml" for the
# tests' quick check; --name keeps the file names scripts/write_benchmark_doc.py reads.
BENCH_ARGS ?=
benchmark: OUT = $(or $(RESULTS),benchmark_results)
benchmark: $(STAMP)
	$(BIN)/lightning-srigl benchmark --config configs/benchmark_cpu.yaml $(BENCH_ARGS) \
		--name benchmark_cpu --output_dir $(OUT)
	$(BIN)/lightning-srigl benchmark --config configs/benchmark_cpu_avx2.yaml $(BENCH_ARGS) \
		--name benchmark_cpu_avx2 --output_dir $(OUT)
	$(BIN)/python scripts/write_benchmark_doc.py $(OUT) \
		$(if $(filter docs/assets,$(OUT)),docs/benchmarks.md,$(OUT)/benchmarks.md)

overhead: $(STAMP)
	PYTHONPATH=. $(BIN)/python scripts/srigl_overhead.py

# The accuracy sweep behind docs/findings.md: RigL against SRigL on MNIST-1D (MLP and 1-D CNN), 162 runs,
# about 43 minutes on a quiet 2-core machine. Results go to RESULTS (git-ignored runs/findings by default);
# `make findings RESULTS=docs/assets/findings/matched` regenerates the committed ones.
# FINDINGS_ARGS="--quick": a 1-minute check.
FINDINGS_ARGS ?=
findings: OUT = $(or $(RESULTS),runs/findings)
findings: $(STAMP)
	PYTHONPATH=. $(BIN)/python scripts/findings_sweep.py --output $(OUT) $(FINDINGS_ARGS)

clean:
	rm -rf $(VENV) site build dist *.egg-info
