#!/usr/bin/env python3
"""What each integer operation of an integer-only model costs on its own.

usage: scripts/integer_ablation.py CHECKPOINT OUT.json [--data-dir D] [--device cuda]
           [--beam 5] [--batch-size 250] [--limit N] [--variants all-float,softmax,...]

CHECKPOINT is a model retrained with ``lowbit train --qat int8i`` (or ``logBi``). Its fake mode
computes exactly the integer-only model's values; with ``IntegerTransformer.float_ops`` any of
the operations (embedding, softmax, residual, layernorm, scores) is left in float instead, the
activations between operations staying on their 8-bit (16-bit for residual sums) grids. The
variants are: ``all-float`` (every operation float: INT8 weights and activations only),
``all-integer``, and each operation alone in integers (``softmax`` = only the softmax integer).
Each variant translates test_2016_flickr and test_2017_flickr (beam search on the float logits
of that variant) and the sacreBLEU scores are written to OUT.json as a list of records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import read_parallel, resolve_data_dir
from lowbit.sw.decode import DecodeOptions, corpus_bleu, translate
from lowbit.sw.quant.integer import OPS

SPLITS = ("test_2016_flickr", "test_2017_flickr")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--data-dir")
    p.add_argument("--device", default="cuda")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--limit", type=int, help="only the first N sentences of each split")
    p.add_argument("--variants", default=",".join(("all-float", "all-integer") + OPS))
    args = p.parse_args()
    try:
        check_output_file(args.out, "OUT.json")
    except LowbitError as e:
        raise SystemExit(f"integer_ablation: error: {e}") from None
    data_dir = resolve_data_dir(args.data_dir)
    model, tokenizer, meta = load_model(args.checkpoint, args.device)
    records = []
    for variant in args.variants.split(","):
        if variant == "all-float":
            model.float_ops = set(OPS)
        elif variant == "all-integer":
            model.float_ops = set()
        elif variant in OPS:
            model.float_ops = set(OPS) - {variant}
        else:
            raise SystemExit(f"unknown variant {variant!r}")
        for split in SPLITS:
            src, ref = read_parallel(data_dir, split, limit=args.limit)
            t0 = time.time()
            hyps = translate(model, tokenizer, src, DecodeOptions(beam=args.beam,
                                                                  batch_size=args.batch_size))
            score, signature = corpus_bleu(hyps, ref)
            records.append({"model": meta["path"], "variant": variant, "split": split,
                            "beam": args.beam, "bleu": round(score.score, 2),
                            "signature": str(signature), "seconds": round(time.time() - t0, 1)})
            print(f"{variant:12} {split}: {score.score:.2f}", flush=True)
            write_text_atomic(args.out, json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
