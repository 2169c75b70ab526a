# The two commands a new user needs: `make demo` and `make test`. Each creates the environment if missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test docs benchmark overhead clean

$(STAMP): pyproject.toml setup.py
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 "setuptools>=68" wheel ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[dev,docs,examples,kernels]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m example_projects.digits_mlp.demo

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
