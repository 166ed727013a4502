#!/usr/bin/env bash
# The README's test command: the whole test suite (golden kernels, Amaranth simulation,
# cocotb on Verilator, NMT, quantization) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# Console scripts of the environment (yowasp-*, lowbit) must be on PATH, as after `activate`.
export PATH="$PWD/.venv/bin:$PATH"
[ -x .venv/bin/python ] || ./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
