#!/usr/bin/env bash
# The house style and types, as CI checks them (.ci/run calls this next to `make test`): ruff's lint rules
# and format (stated in pyproject.toml) over the code, and mypy, strict on sparsity/, masking/ and kernels/.
# Run from anywhere: `bash scripts/lint.sh` (PYTHON=... picks the interpreter; default: the venv's, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PATHS=(lightning_srigl tests scripts example_projects docs setup.py)
status=0
"$PYTHON" -m ruff check "${PATHS[@]}" || status=1
"$PYTHON" -m ruff format --check "${PATHS[@]}" || status=1
"$PYTHON" -m mypy || status=1  # files and strictness: [tool.mypy] in pyproject.toml
exit $status
