#!/usr/bin/env bash
# The README's demo command: install (if needed), then translate with the shipped default
# model and score it with sacreBLEU. Extra arguments go to `lowbit demo`.
# The score reads Multi30k from --data-dir, else $LOWBIT_DATA_DIR, else ../shared/data/multi30k
# beside the repository where it exists, else ~/.local/share/lowbit/multi30k; with none of
# them the demo only translates and prints the command that fetches the data.
set -euo pipefail
cd "$(dirname "$0")/.."
# Console scripts of the environment (yowasp-*, lowbit) must be on PATH, as after `activate`.
export PATH="$PWD/.venv/bin:$PATH"
[ -x .venv/bin/lowbit ] || ./scripts/setup.sh
if [ -z "${LOWBIT_DATA_DIR:-}" ] && [ -d ../shared/data/multi30k ]; then
    export LOWBIT_DATA_DIR="$PWD/../shared/data/multi30k"
fi
exec .venv/bin/lowbit demo "$@"
