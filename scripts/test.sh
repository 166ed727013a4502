#!/usr/bin/env bash
# The README's test command: the whole test suite (golden kernels, Amaranth simulation,
# cocotb on Verilator, NMT, quantization) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || ./scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
