#!/usr/bin/env bash
# Create .venv and install lowbit with everything it needs, from PyPI only.
# torch is pinned to 2.13.0 (CPU build) through constraints.txt; see README.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,fpga]"
