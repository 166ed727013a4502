#!/usr/bin/env bash
# The README's test command: the whole test suite (golden kernels, Amaranth simulation,
# cocotb on Verilator, NMT, quantization) on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# Console scripts of the environment (yowasp-*, lowbit) must be on PATH, as after `activate`.
export PATH="$PWD/.venv/bin:$PATH"
[ -x .venv/bin/python ] || ./scripts/setup.sh
# The Multi30k data the tests read: $LOWBIT_DATA_DIR if set; else ../shared/data/multi30k beside
# the repository where it exists (CI's layout); else lowbit's per-user data directory,
# ~/.local/share/lowbit/multi30k, which `lowbit data fetch multi30k` fills.
if [ -z "${LOWBIT_DATA_DIR:-}" ] && [ -d ../shared/data/multi30k ]; then
    export LOWBIT_DATA_DIR="$PWD/../shared/data/multi30k"
fi
exec .venv/bin/python -m pytest -q "$@"
