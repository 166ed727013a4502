#!/usr/bin/env bash
# Sequence-level distillation data (Kim & Rush 2016): a data directory like Multi30k's whose
# training targets are a teacher model's own beam translations of the training sources, so that
# retraining on it copies the teacher's decoding instead of fitting the reference translations.
# The other splits (validation, test) are symbolic links to the originals: validation BLEU and
# test scores stay measured against the real references.
#
# usage: scripts/seqkd_data.sh OUT
#   then e.g. lowbit train --init multi30k-en-de --qat log4 --data-dir OUT ...
#   or        DATA_DIR=OUT scripts/quantize_all.sh train pack eval
# environment (defaults):
#   DATA_DIR (lowbit's default data directory: $LOWBIT_DATA_DIR or ~/.local/share/lowbit/multi30k)
#   MODEL (multi30k-en-de: the teacher)  BEAM (5)  DEVICE (auto)  BATCH (250)
#   THREADS (CPU threads when decoding on the CPU: all cores)
#   LIMIT (unset: every training pair; N: only the first N, for a quick look)
# OUT must not exist; it appears only when complete (built beside it, then renamed).
set -euo pipefail

OUT=${1:?usage: scripts/seqkd_data.sh OUT}
MODEL=${MODEL:-multi30k-en-de}
BEAM=${BEAM:-5}
DEVICE=${DEVICE:-auto}
BATCH=${BATCH:-250}
THREADS=${THREADS:-$(nproc)}
if [ -z "${DATA_DIR:-}" ]; then
    DATA_DIR=$(python3 -c 'from lowbit.sw.data import resolve_data_dir; print(resolve_data_dir())')
fi

die() { echo "error: $*" >&2; exit 2; }
[ -e "$OUT" ] && die "$OUT already exists; choose a new directory"
[ -d "$DATA_DIR" ] || die "data directory $DATA_DIR not found (set DATA_DIR)"
src=""
for name in train.en.gz train.en; do [ -f "$DATA_DIR/$name" ] && { src="$DATA_DIR/$name"; break; }; done
[ -n "$src" ] || die "no train.en.gz or train.en in $DATA_DIR"
if [ -n "${LIMIT:-}" ] && ! [[ "$LIMIT" =~ ^[1-9][0-9]*$ ]]; then
    die "LIMIT must be a positive whole number, not '$LIMIT'"
fi

tmp="$OUT.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
for f in "$DATA_DIR"/*; do
    name=$(basename "$f")
    case "$name" in train.*) ;; *) ln -s "$(realpath "$f")" "$tmp/$name" ;; esac
done

case "$src" in *.gz) zcat "$src" ;; *) cat "$src" ;; esac \
    | { if [ -n "${LIMIT:-}" ]; then awk -v n="$LIMIT" 'NR <= n'; else cat; fi; } > "$tmp/train.en"
# (awk reads to the end: `head` would close the pipe early and pipefail would stop the script)
n_src=$(wc -l < "$tmp/train.en")
echo "translating $n_src training sentences with $MODEL (beam $BEAM) -> $OUT" >&2
lowbit translate --model "$MODEL" --beam "$BEAM" --device "$DEVICE" --batch-size "$BATCH" \
    --threads "$THREADS" < "$tmp/train.en" > "$tmp/train.de"
n_tgt=$(wc -l < "$tmp/train.de")
[ "$n_src" = "$n_tgt" ] || die "the teacher wrote $n_tgt lines for $n_src sources"
gzip -n "$tmp/train.en" "$tmp/train.de"
mv "$tmp" "$OUT"
echo "wrote $OUT: $n_src pairs (sources from $DATA_DIR, targets by $MODEL, beam $BEAM)" >&2
