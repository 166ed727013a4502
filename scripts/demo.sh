#!/usr/bin/env bash
# The README's demo command: install (if needed), then translate with the shipped default
# model and score it with sacreBLEU. Extra arguments go to `lowbit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Console scripts of the environment (yowasp-*, lowbit) must be on PATH, as after `activate`.
export PATH="$PWD/.venv/bin:$PATH"
[ -x .venv/bin/lowbit ] || ./scripts/setup.sh
exec .venv/bin/lowbit demo "$@"
