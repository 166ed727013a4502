#!/usr/bin/env bash
# `lowbit verify` over every unit, every bit width the unit takes, and several shapes: odd sizes
# that are not multiples of the array, and K at the documented maximum (32768). Prints one line
# per run (the command and its last line) and exits non-zero if any run is not bit-exact.
#   scripts/verify_sweep.sh [OUT.txt]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-/dev/null}
status=0
run() {
    local last
    last=$(lowbit verify "$@" 2>&1 | tail -n 1)
    [[ "$last" == bit-exact:* ]] && [[ "${last#bit-exact: }" == "$(echo "${last#bit-exact: }" | awk -F/ '{print $2"/"$2}')" ]] || status=1
    echo "lowbit verify $* -> $last" | tee -a "$out"
}
: > "$out"
for b in 2 3 4 5 6 7 8; do
    run --unit int8 --a-bits $b --w-bits $b --m 7 --k 37 --n 9 --seed $b
done
for b in 1 2 3 4 5 6 7 8; do
    run --unit log --bits $b --m 7 --k 37 --n 9 --seed $b
done
for b in 1 2 3 4 5 6 7 8; do
    run --unit xnor --planes $b --m 7 --k 45 --n 9 --seed $b
done
run --unit int8 --m 3 --k 32768 --n 5 --seed 11
run --unit log --bits 8 --zero-code --m 3 --k 32768 --n 5 --seed 12
run --unit xnor --planes 8 --m 3 --k 32768 --n 5 --seed 13
run --unit int8 --m 17 --k 300 --n 13 --rows 8 --cols 8 --seed 14
exit $status
