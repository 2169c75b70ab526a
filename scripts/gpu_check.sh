#!/usr/bin/env bash
# The whole GPU check in one command: environment, GPU tests, the GPU benchmark sweep, CSV, plots, verdict.
#
#   bash scripts/gpu_check.sh                    # on a CUDA machine (estimated 5-7 minutes on one H200;
#                                                # not yet run on one)
#   bash scripts/gpu_check.sh --interpret-smoke  # anywhere: the plumbing on CPU, Triton interpreter, tiny sizes
#
# Results go to $GPU_CHECK_OUT, else $OUT (set on this workplace's device machines), else gpu_check_results/:
#   gpu_tests.log, benchmark_gpu.csv (raw), benchmark_gpu_summary.csv (ratios), benchmark_gpu_t1.png (times),
#   benchmark_gpu_speedup_t1.png (speedup vs sparsity per batch, the paper's Figure 11 style), gpu_check_verdict.md.
#
# Python: $GPU_CHECK_PYTHON if set (used as it is; without lightning_srigl installed, this checkout goes on
# PYTHONPATH: e.g. GPU_CHECK_PYTHON=python3 on a CUDA image skips the install), else a virtual
# environment .venv-gpu on top of ${GPU_CHECK_BASE_PYTHON:-python3} that sees that interpreter's packages,
# so a machine's own torch and triton (e.g. a CUDA image without network access) are used. Where torch or
# triton is missing there, it installs torch==2.13.0 (the project's pin) and triton from the package index;
# wheels in .whl/ are installed first. The package itself is installed editable with --no-build-isolation
# --no-deps (its CPU kernels build against that torch; about a minute).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  --interpret-smoke) MODE=smoke ;;
  "") ;;
  *) echo "usage: bash scripts/gpu_check.sh [--interpret-smoke]" >&2; exit 2 ;;
esac
RESULTS="${GPU_CHECK_OUT:-${OUT:-gpu_check_results}}"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
START=$SECONDS
phase() { echo "== gpu_check [$((SECONDS - START)) s] $*"; }

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  PY="$GPU_CHECK_PYTHON"
  # Not installed there: run from this checkout (the CPU kernels, unused here, would build on first use).
  "$PY" -c "import lightning_srigl" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  phase "environment: .venv-gpu"
  BASE="${GPU_CHECK_BASE_PYTHON:-python3}"
  if [[ ! -x .venv-gpu/bin/python ]]; then
    "$BASE" -m venv --system-site-packages --without-pip .venv-gpu || exit 2
    # --system-site-packages shows only the base installation's packages; when $BASE is itself a virtual
    # environment (CUDA images ship torch in one), a .pth file adds its site-packages too. No pip of its
    # own: the base's pip, setuptools and wheel install into it (a venv's bundled setuptools may be older).
    PTH="$(.venv-gpu/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_base_site.pth"
    "$BASE" -c 'import site, sys; sys.prefix != sys.base_prefix and print(*site.getsitepackages(), sep="\n")' >"$PTH"
  fi
  PY=.venv-gpu/bin/python
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps .whl/*.whl || exit 2
  fi
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q torch==2.13.0 || exit 2
  "$PY" -c "import triton" 2>/dev/null || "$PY" -m pip install -q "triton>=3.1" || exit 2
  "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e . || exit 2
fi
"$PY" - <<'EOF' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "triton", "lightning", "torchmetrics", "rich", "matplotlib", "yaml", "pytest",
                       "hypothesis", "lightning_srigl") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages {missing}; install them (or carry their wheels in .whl/)")
EOF

TESTS=(tests/condensed/test_triton_kernel.py tests/condensed/test_triton_linear.py tests/test_gpu.py
       "tests/callbacks/test_accelerate_callback.py::test_mixed_precision_fit_accelerates_and_predicts")
if [[ $MODE == gpu ]]; then
  export TRITON_INTERPRET=0
  no_cuda='gpu_check: no CUDA device (use --interpret-smoke)'
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else '$no_cuda')" || exit 2
  nvidia-smi >"$RESULTS/gpu_tests.log" 2>&1
  phase "GPU tests (compiled Triton kernels on CUDA)"
  timeout 150 "$PY" -m pytest -q -rs "${TESTS[@]}" 2>&1 | tee -a "$RESULTS/gpu_tests.log"
  TESTS_RC=${PIPESTATUS[0]}
  # The sweep gets what is left of ${GPU_CHECK_BUDGET_S:-570} s (one device call may run 600 s); the shapes
  # it finished before a timeout stay in $RESULTS, the paper's 3072->768 first.
  LEFT=$(( ${GPU_CHECK_BUDGET_S:-570} - (SECONDS - START) )); (( LEFT >= 60 )) || LEFT=60
  phase "GPU benchmark sweep (configs/benchmark_gpu.yaml), at most $LEFT s"
  timeout "$LEFT" "$PY" scripts/gpu_check.py --out "$RESULTS"
  SWEEP_RC=$?
else
  export TRITON_INTERPRET=1
  phase "GPU tests: collected only (the suite runs them in the interpreter)"
  "$PY" -m pytest -q --collect-only "${TESTS[@]}" >"$RESULTS/gpu_tests.log" 2>&1
  TESTS_RC=$?
  tail -1 "$RESULTS/gpu_tests.log"
  phase "benchmark sweep, interpreter smoke sizes"
  "$PY" scripts/gpu_check.py --out "$RESULTS" --interpret-smoke
  SWEEP_RC=$?
fi
phase "done: tests exit $TESTS_RC, sweep exit $SWEEP_RC; results in $RESULTS"
exit $((TESTS_RC != 0 || SWEEP_RC != 0))
