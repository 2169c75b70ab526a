# The two commands a new user needs: `make demo` and `make test`. Each creates the environment if missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# `make demo` writes its tables to RESULTS (git-ignored runs/ by default);
# `make demo RESULTS=example_projects/digits_mlp/results` updates the committed copy.
RESULTS   ?= runs/digits_demo
# Extra demo flags, e.g. DEMO_ARGS="--seeds 1 --epochs 1 --min-run-time 0.05" for the quick check the tests run.
DEMO_ARGS ?=

.PHONY: demo test docs benchmark overhead clean

# The installation's output goes to $(VENV)/install.log (printed in full if a step fails).
$(STAMP): pyproject.toml setup.py
	@echo "Setting up $(VENV): torch 2.13.0 (CPU), this package and its C++ kernels (a few minutes, once; log: $(VENV)/install.log)"
	@test -d $(VENV) || $(PY) -m venv $(VENV)
	@( $(BIN)/pip install -q --upgrade pip \
	  && $(BIN)/pip install -q torch==2.13.0 "setuptools>=77" wheel ninja \
	  && $(BIN)/pip install -q --no-build-isolation -e ".[dev,docs,examples,kernels]" \
	) > $(VENV)/install.log 2>&1 || (cat $(VENV)/install.log; exit 1)
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m example_projects.digits_mlp.demo --out $(RESULTS) $(DEMO_ARGS)

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 -q

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# Results go to $(RESULTS) (ignored by git); `make benchmark RESULTS=docs/assets` regenerates the
# committed CSVs, plots and docs/benchmarks.md.
RESULTS ?= benchmark_results
benchmark: $(STAMP)
	$(BIN)/lightning-srigl benchmark --config configs/benchmark_cpu.yaml --output_dir $(RESULTS)
	$(BIN)/lightning-srigl benchmark --config configs/benchmark_cpu_avx2.yaml --output_dir $(RESULTS)
	$(BIN)/python scripts/write_benchmark_doc.py $(RESULTS) $(if $(filter docs/assets,$(RESULTS)),docs/benchmarks.md,$(RESULTS)/benchmarks.md)

overhead: $(STAMP)
	PYTHONPATH=. $(BIN)/python scripts/srigl_overhead.py

clean:
	rm -rf $(VENV) site build *.egg-info
