#!/usr/bin/env bash
# Quantization-aware retraining of every scheme from the FP32 baseline, packing, evaluation.
#
#   scripts/quantize_all.sh train   # `lowbit train --qat S` for every scheme, all in parallel
#   scripts/quantize_all.sh pack    # `lowbit quantize` each retrained model (+ no-retraining ones)
#   scripts/quantize_all.sh eval    # `lowbit eval --json` every packed model on both test splits
#
# The stages run in that order when no stage is named. All schemes train at the same time on one
# GPU (each process is small); settings come from the environment:
#   BASE (multi30k-en-de)  RUNS (runs/quant)  SCHEMES ("int8 int6 log4 log3 log2 log1 bmt1 bmt1a1 mixed")
#     an entry S-kd trains scheme S with word-level distillation from BASE (--distill BASE
#     --distill-weight KD_WEIGHT); the entry fp32-control trains BASE further for the same time
#     with the same schedule and no quantization (the control for QAT's extra training); a
#     suffix -sN (e.g. log4-kd-s2) trains that entry with --seed N (repeated runs of one recipe)
#   TAG ("": appended to each packed model's name, e.g. "-20m")
#   PTQ ("int8 log4": packed straight from the float model, no retraining; "" for none)
#   QAT_MINUTES (5)  LR (4e-4)  WARMUP (300)  PHASE_STEPS (250)  PHASE_MINUTES (unset: by steps)
#   AVG_LAST (3)  KD_WEIGHT (0.5)  EVAL_DEVICE (auto)  BEAM (5)
#   RESULTS (RUNS/results.json)  DATA_DIR (lowbit's default data directory)
#   TRAIN_ARGS, EVAL_ARGS (extra arguments, e.g. "--limit 100" for a smoke run)
set -uo pipefail

# a SCHEMES entry without its seed suffix (-sN), and the seed arguments of that suffix
recipe_of() { if [[ "$1" =~ ^(.*)-s([0-9]+)$ ]]; then echo "${BASH_REMATCH[1]}"; else echo "$1"; fi; }
seed_args() { if [[ "$1" =~ -s([0-9]+)$ ]]; then echo "--seed ${BASH_REMATCH[1]}"; fi; }
# the scheme of a SCHEMES entry (S, S-kd, fp32-control, each optionally with -sN)
scheme_of() { local r; r=$(recipe_of "$1"); case "$r" in fp32-control) echo fp32 ;; *) echo "${r%-kd}" ;; esac; }
# sourced (tests): the functions above only
(return 0 2>/dev/null) && return 0

cd "$(dirname "$0")/.."

BASE=${BASE:-multi30k-en-de}
RUNS=${RUNS:-runs/quant}
SCHEMES=${SCHEMES:-"int8 int6 log4 log3 log2 log1 bmt1 bmt1a1 mixed"}
PTQ=${PTQ-"int8 log4"}
QAT_MINUTES=${QAT_MINUTES:-5}
LR=${LR:-4e-4}
WARMUP=${WARMUP:-300}
PHASE_STEPS=${PHASE_STEPS:-250}
AVG_LAST=${AVG_LAST:-3}
KD_WEIGHT=${KD_WEIGHT:-0.5}
TAG=${TAG:-}
EVAL_DEVICE=${EVAL_DEVICE:-auto}
BEAM=${BEAM:-5}
RESULTS=${RESULTS:-$RUNS/results.json}
DATA=()
[ -n "${DATA_DIR:-}" ] && DATA=(--data-dir "$DATA_DIR")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONUNBUFFERED=1
mkdir -p "$RUNS"

stage_train() {
    local pids=()
    for s in $SCHEMES; do
        local extra=() r
        r=$(recipe_of "$s")
        case "$r" in
            fp32-control) ;;
            *-kd) extra=(--qat "${r%-kd}" --distill "$BASE" --distill-weight "$KD_WEIGHT") ;;
            *) extra=(--qat "$r") ;;
        esac
        # shellcheck disable=SC2207
        extra+=($(seed_args "$s"))
        lowbit train --init "$BASE" "${extra[@]}" --out "$RUNS/qat-$s" "${DATA[@]}" --epochs 1000 \
            --max-minutes "$QAT_MINUTES" --lr "$LR" --warmup "$WARMUP" --avg-last "$AVG_LAST" \
            --eval-every 1000 --qat-phase-steps "$PHASE_STEPS" \
            ${PHASE_MINUTES:+--qat-phase-minutes "$PHASE_MINUTES"} ${TRAIN_ARGS:-} \
            > "$RUNS/train-$s.log" 2>&1 &
        pids+=($!)
    done
    local fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    for s in $SCHEMES; do echo "train $s: $(tail -n 1 "$RUNS/train-$s.log")"; done
    return $fail
}

stage_pack() {
    local pids=()
    mkdir -p "$RUNS/packed"
    for s in $SCHEMES; do
        lowbit quantize --model "$RUNS/qat-$s" --scheme "$(scheme_of "$s")" -o "$RUNS/packed/$s$TAG" --force "${DATA[@]}" \
            > "$RUNS/pack-$s.log" 2>&1 &
        pids+=($!)
    done
    for s in $PTQ fp32; do
        lowbit quantize --model "$BASE" --scheme "$s" -o "$RUNS/packed/$s-ptq" --force "${DATA[@]}" \
            > "$RUNS/pack-$s-ptq.log" 2>&1 &
        pids+=($!)
    done
    local fail=0
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    for f in "$RUNS"/pack-*.log; do echo "$(basename "$f" .log): $(tail -n 1 "$f")"; done
    return $fail
}

stage_eval() {
    local pids=() fail=0
    for d in "$RUNS"/packed/*/; do
        local name
        name=$(basename "$d")
        for split in test_2016_flickr test_2017_flickr; do
            # each run appends to its own file; merged below (no two writers on one file)
            lowbit eval --model "$d" --split "$split" --beam "$BEAM" --device "$EVAL_DEVICE" \
                "${DATA[@]}" ${EVAL_ARGS:-} --json "$RUNS/res-$name-$split.json" \
                --output "$RUNS/hyp-$name-$split.txt" > "$RUNS/eval-$name-$split.log" 2>&1 &
            pids+=($!)
        done
    done
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    python3 -P - "$RESULTS" "$RUNS"/res-*.json <<'EOF'
import json, sys
from lowbit.sw.quant.report import append_result, read_results
for path in sys.argv[2:]:
    for record in read_results(path):
        append_result(sys.argv[1], record)
EOF
    for f in "$RUNS"/eval-*.log; do echo "$(basename "$f" .log): $(tail -n 1 "$f")"; done
    return $fail
}

status=0
for stage in "${@:-train pack eval}"; do
    for st in $stage; do
        case "$st" in
            train) stage_train || status=1 ;;
            pack) stage_pack || status=1 ;;
            eval) stage_eval || status=1 ;;
            *) echo "unknown stage $st (train, pack, eval)" >&2; exit 2 ;;
        esac
    done
done
exit $status
