"""The flags and the work of ``lowbit quantize`` (write a packed model), ``lowbit report``
(regenerate docs/results.md), ``lowbit check-devices`` and ``lowbit check-integer`` (listed in
:data:`lowbit.commands.COMMANDS`; the checks themselves are :mod:`.consistency` and
:mod:`.intcheck`).

``lowbit train --qat SCHEME`` and ``lowbit eval --json`` live in :mod:`lowbit.sw.cli` and call
:func:`qat_hooks` / :func:`lowbit.sw.quant.report.append_result` from here.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from lowbit import LowbitError
from lowbit.argtypes import positive_int
from lowbit.io import check_output_dir


def _repo_docs() -> Path:
    return Path(__file__).resolve().parents[2] / "docs"


def quantize_arguments(p) -> None:
    p.add_argument("--model", required=True, help="shipped name or checkpoint directory")
    p.add_argument("--scheme", required=True,
                   help="int8, int6 (int2..int8), log1..log8, bmt1, bmt1a1, bmt1a1-nonorm, mixed, fp32")
    p.add_argument("-o", "--out", required=True,
                   help="output directory of the packed model; it must not exist yet or be "
                        "empty (an existing packed model is replaced only with --force)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it holds a packed model (never anything else, never "
                        "the input model)")
    p.add_argument("--data-dir", help="training data for calibration / word frequencies "
                                      "(default: $LOWBIT_DATA_DIR or ~/.local/share/lowbit/multi30k)")
    p.add_argument("--calibrate-batches", type=positive_int, default=50,
                   help="training batches used to calibrate activation ranges when the model "
                        "has none (50)")


def report_arguments(p) -> None:
    p.add_argument("--results", help="JSON list written by `lowbit eval --json` "
                                     "(default docs/results.json)")
    p.add_argument("--docs", help="output folder (default: the repository's docs/)")
    p.add_argument("--beam", type=positive_int, default=5, help="which beam size to tabulate (5)")


def check_devices_arguments(p) -> None:
    p.add_argument("--model", required=True, help="shipped name or directory")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--limit", type=positive_int, help="only the first N sentences")
    p.add_argument("--beam", type=positive_int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--jobs", type=positive_int, default=1, help="CPU worker processes (1)")


def check_integer_arguments(p) -> None:
    p.add_argument("--model", required=True, help="shipped name or directory")
    p.add_argument("--data-dir", help="directory with SPLIT.{en,de}.gz")
    p.add_argument("--split", default="test_2016_flickr", help="split (test_2016_flickr)")
    p.add_argument("--limit", type=int, default=50, help="only the first N sentences (50)")
    p.add_argument("--beam", type=int, default=5, help="beam size, 1 = greedy (5)")
    p.add_argument("--batch-size", type=int, default=50, help="sentences per batch (50)")


def training_examples(tokenizer, data_dir, limit: int | None = None):
    from lowbit.sw.data import read_parallel

    src, tgt = read_parallel(data_dir, "train", limit=limit)
    return src, tgt, [(tokenizer.encode(s, "source"), tokenizer.encode(t, "target"))
                      for s, t in zip(src, tgt)]


def calibration_batches(examples, n_batches: int, pad: int, start: int, max_tokens: int = 4096):
    """The first ``n_batches`` length-bucketed batches (fixed seed) as ``(src, tgt_in)``."""
    from lowbit.sw.train import make_batches, make_tensors

    examples = [e for e in examples if max(len(e[0]), len(e[1])) <= 128]
    batches = make_batches([max(len(s), len(t)) for s, t in examples], max_tokens, random.Random(0))
    for batch in batches[:n_batches]:
        src, tgt_in, _ = make_tensors(examples, batch, pad, start)
        yield src, tgt_in


def quantize_model(model, tokenizer, scheme: str, data_dir=None, calibrate_batches: int = 50,
                   log=print):
    """Prepare ``model`` for ``scheme`` (if it is not a QAT model of that scheme already), assign
    per-word planes and calibrate ranges where missing. Returns the prepared model (eval mode)."""
    from lowbit.sw.data import resolve_data_dir

    from . import qat
    from .packed import acts_calibrated
    from .schemes import get_scheme

    sch = get_scheme(scheme)
    have = qat.scheme_of(model)
    if have is not None and have.name != sch.name:
        raise LowbitError(f"the model was trained with --qat {have.name}; quantize it with "
                          f"--scheme {have.name} (or start from the float model)")
    if sch.bmt_norms and not model.config.bmt_norms:
        raise LowbitError(f"scheme {sch.name} needs BMT's extra LayerNorms: train the model with "
                          f"`lowbit train --qat {sch.name} --init MODEL` first")
    model = qat.prepare_model(model, sch)
    qat.set_phase(model, sch, len(sch.phases) - 1)   # everything quantized
    head = getattr(model, "lm_head", None)
    need_planes = hasattr(head, "row_planes") and int(head.row_planes.min()) < 1
    examples = None
    if need_planes or not acts_calibrated(model):
        data_dir = resolve_data_dir(data_dir)
        src, tgt, examples = training_examples(tokenizer, data_dir)
    if need_planes:
        planes = qat.assign_word_planes(model, qat.token_counts(tokenizer, src, tgt,
                                                                model.config.vocab_size))
        log(f"per-word planes from training-data frequencies: average "
            f"{float(planes.double().mean()):.2f} bits per embedding weight")
    if not acts_calibrated(model):
        if calibrate_batches < 1:
            raise LowbitError("the model has no activation ranges: --calibrate-batches must be >= 1")
        from tqdm import tqdm

        cfg = model.config
        batches = list(calibration_batches(examples, calibrate_batches, cfg.pad_token_id,
                                           cfg.decoder_start_token_id))
        device = next(model.parameters()).device
        qat.calibrate(model, tqdm(batches, desc="calibrating", unit="batch"), device)
    model.eval()
    return model


def qat_hooks(scheme: str, init: str | None, data_dir, phase_steps: int, log=print,
              phase_minutes: float | None = None, word_planes=None):
    """``(transform_model, after_step)`` for ``lowbit train --qat SCHEME --init MODEL``
    (``word_planes``: ``--qat-word-planes``, None for the scheme's)."""
    from lowbit.sw.checkpoint import load_model

    from .qat import QATHooks, needs_word_counts, token_counts
    from .schemes import get_scheme, with_word_planes

    sch = get_scheme(scheme)
    if sch.name == "fp32":
        raise LowbitError("--qat fp32 is plain training: leave --qat out")
    if word_planes is not None:     # refused before any model or data is read
        try:
            sch = with_word_planes(sch, word_planes)
        except LowbitError as e:
            raise LowbitError(f"--qat-word-planes: {e}") from None
    if init is None:
        raise LowbitError("--qat needs --init MODEL: quantization-aware training starts from a "
                          "trained float model")
    counts = None
    if needs_word_counts(sch):  # per-word planes from the training text's token frequencies
        from lowbit.sw.data import read_parallel

        model, tokenizer, _ = load_model(init)
        src, tgt = read_parallel(data_dir, "train")
        counts = token_counts(tokenizer, src, tgt, model.config.vocab_size)
    hooks = QATHooks(sch.name, phase_steps=phase_steps, counts=counts, log=log,
                     phase_minutes=phase_minutes, word_planes=word_planes)
    return hooks.transform, hooks.after_step


def run_quantize(args):
    from lowbit.sw.checkpoint import load_model, resolve_model_dir

    from .packed import is_packed, package_size, write_packed

    from .schemes import get_scheme

    source = resolve_model_dir(args.model)
    if is_packed(source):
        raise LowbitError(f"{args.model} is already a packed model")
    get_scheme(args.scheme)     # an unknown scheme fails before the model is loaded
    check_output_dir(args.out, "-o", inputs=[source, args.data_dir], force=args.force,
                     replaceable=is_packed, kind="packed model")
    model, tokenizer, meta = load_model(args.model)
    model = quantize_model(model, tokenizer, args.scheme, args.data_dir, args.calibrate_batches)
    out = write_packed(model, tokenizer, Path(args.out),
                       meta={"source": meta.get("path"), "source_meta": {
                           k: v for k, v in meta.items() if k in ("trained_with", "train_summary")}})
    import json

    stats = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stats"]
    print(f"wrote {out}: scheme {args.scheme}, {package_size(out) / 2 ** 20:.2f} MiB "
          f"(weights.bin + manifest.json), {stats['bits_per_weight']:.2f} bits per weight, "
          f"{stats['integer_matmuls']}/{stats['matmuls']} matmuls on integer units")


def run_report(args):
    from lowbit.hw.fpga_render import report_section as fpga_report_section

    from .report import write_report

    docs = Path(args.docs) if args.docs else _repo_docs()
    results = Path(args.results) if args.results else docs / "results.json"
    bench = docs.parent / "bench"
    out = write_report(results, docs, beam=args.beam, sections=[fpga_report_section(docs)],
                       bench_dir=bench if bench.is_dir() else None,
                       readme=None if args.docs else docs.parent / "README.md")
    if not args.docs:   # the hardware figure, from bench/fpga.json, with the rest
        from lowbit.hw.fpga_bench import RESULTS_PATH, load_results
        from lowbit.hw.fpga_render import PLOT_PATH, plot_cost

        data = load_results(RESULTS_PATH)
        if data["records"]:
            plot_cost(data, PLOT_PATH)
    print(f"wrote {out}")


def run_check_devices(args):
    from lowbit.sw.data import read_parallel, resolve_data_dir

    from .consistency import compare_devices

    src, _ = read_parallel(resolve_data_dir(args.data_dir), args.split, limit=args.limit)
    same, total, first = compare_devices(args.model, src, args.beam, args.jobs)
    if first is not None:
        i, a, b = first
        print(f"first difference: sentence {i + 1}: cpu {a} vs cuda {b}")
    print(f"identical: {same}/{total} sentences")
    sys.stdout.flush()
    return 0 if same == total else 1


def run_check_integer(args):
    import torch

    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.data import read_parallel, resolve_data_dir
    from lowbit.sw.decode import DecodeOptions

    from .intcheck import check_integer

    for name in ("limit", "beam", "batch_size"):
        value = getattr(args, name)
        if value < 1:
            raise LowbitError(f"--{name.replace('_', '-')} must be a positive integer, not {value}")
    src, _ = read_parallel(resolve_data_dir(args.data_dir), args.split, limit=args.limit)
    opts = DecodeOptions(beam=args.beam, batch_size=args.batch_size)
    torch.set_num_threads(1)
    model, tokenizer, meta = load_model(args.model, "cpu")
    print(f"model: {meta['path']}  split: {args.split} ({len(src)} sentences)  beam: {args.beam}")
    ok, what = check_integer(model, tokenizer, src, opts)
    print(f"integer-only: {'yes' if ok else 'no'} ({what})")
    sys.stdout.flush()
    return 0 if ok else 1
