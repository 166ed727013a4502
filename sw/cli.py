"""The flags and the work of the NMT stack's commands (train, translate, eval, models, import-hf,
export-hf, export-ct2, demo and ``bench decode``), listed in :data:`lowbit.commands.COMMANDS`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import check_output_dir, check_output_file, write_text_atomic
from lowbit.argtypes import finite_float, nonneg_float, nonneg_int, positive_float
from lowbit.argtypes import positive_int as _positive_int
from lowbit.argtypes import positive_int_list


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LowbitError(f"--device {name}: no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise LowbitError(f"--device must be cpu, cuda[:N] or auto, not {name!r}")
    return name


def _set_threads(n: int) -> None:
    """Decoding runs small matrix products; one intra-op thread is close to two on an idle
    2-core machine and avoids the many-fold slowdown of spinning OpenMP threads on a busy one."""
    import torch

    torch.set_num_threads(n)


def _add_decode_args(p: argparse.ArgumentParser, beam_default: int) -> None:
    p.add_argument("--beam", type=_positive_int, default=beam_default,
                   help=f"beam size, 1 = greedy (default {beam_default})")
    p.add_argument("--length-penalty", type=finite_float, default=1.0,
                   help="beam score = log-probability / length ** this (default 1.0)")
    p.add_argument("--max-len-a", type=nonneg_float, default=1.5, help="output length limit a*src+b: a (1.5)")
    p.add_argument("--max-len-b", type=nonneg_int, default=10, help="output length limit a*src+b: b (10)")
    p.add_argument("--batch-size", type=_positive_int, default=64, help="sentences per batch (64)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1)")


def _decode_options(args):
    from .decode import DecodeOptions

    return DecodeOptions(beam=args.beam, length_penalty=args.length_penalty, max_len_a=args.max_len_a,
                         max_len_b=args.max_len_b, batch_size=args.batch_size,
                         max_input_tokens=getattr(args, "max_input_tokens", 256))


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="directory with SPLIT.{en,de}.gz (default: $LOWBIT_DATA_DIR or "
                                      "~/.local/share/lowbit/multi30k)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--config", help="preset (tiny, small, deep-enc, wide), JSON file or inline JSON "
                                    "with TransformerConfig fields (default: small)")
    p.add_argument("--init", metavar="MODEL", help="start from this model's weights and tokenizer")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    from .train import TrainOptions

    defaults = TrainOptions()
    for name, kind in (("epochs", _positive_int), ("max_tokens", _positive_int),
                       ("lr", positive_float), ("warmup", _positive_int),
                       ("label_smoothing", nonneg_float), ("weight_decay", nonneg_float),
                       ("clip_norm", nonneg_float), ("seed", nonneg_int),
                       ("avg_last", _positive_int), ("vocab_size", _positive_int),
                       ("eval_every", _positive_int), ("max_train_tokens", _positive_int),
                       ("limit", _positive_int), ("val_limit", _positive_int),
                       ("max_minutes", positive_float)):
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=getattr(defaults, name),
                       help=f"(default {getattr(defaults, name)})")
    p.add_argument("--spm-type", choices=("unigram", "bpe"), default=defaults.spm_type)
    p.add_argument("--save-dtype", choices=("float32", "float16", "bfloat16"), default=defaults.save_dtype,
                   help="dtype of the saved weights (float16 halves the size; loaded as float32)")
    p.add_argument("--dropout", type=nonneg_float,
                   help="dropout of the model trained, replacing its config's (default: the "
                        "config's; with --init the init model's)")
    p.add_argument("--distill", metavar="MODEL",
                   help="word-level knowledge distillation from this teacher model (same vocabulary), "
                        "e.g. the FP32 model during --qat (a deviation from the quantization papers)")
    p.add_argument("--distill-weight", type=finite_float, default=defaults.distill_weight,
                   help="weight a of the teacher term: (1-a)*CE(labels) + a*CE(teacher) "
                        f"(default {defaults.distill_weight})")
    p.add_argument("--qat", metavar="SCHEME",
                   help="quantization-aware training with this scheme (int8, int6, log1..log8, bmt1, "
                        "bmt1a1, mixed); needs --init (see docs/quantization.md)")
    p.add_argument("--qat-phase-steps", type=_positive_int, default=1000,
                   help="steps per QAT phase for phased schemes (mixed: embedding, decoder, encoder; "
                        "bmt: float with BMT norms, then binarized) (1000)")
    p.add_argument("--qat-phase-minutes", type=positive_float,
                   help="advance QAT phases by training time instead of steps (minutes per phase)")
    p.add_argument("--qat-word-planes", type=positive_int_list, metavar="P1,P2,...",
                   help="planes per word of the binary-coded embedding/output matrix (mixed, bmt*) "
                        "for the frequency clusters 1 : 4 : 16 : ..., most frequent first "
                        "(default 4,3,2,1)")


def _model_argument(p: argparse.ArgumentParser) -> None:
    from .checkpoint import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"shipped name or directory ({DEFAULT_MODEL})")


def translate_arguments(p: argparse.ArgumentParser) -> None:
    _model_argument(p)
    _add_decode_args(p, beam_default=5)
    p.add_argument("--max-input-tokens", type=_positive_int, default=256,
                   help="longer input lines are truncated with a warning (256)")


def eval_arguments(p: argparse.ArgumentParser) -> None:
    _model_argument(p)
    p.add_argument("--data-dir", help="directory with SPLIT.{en,de}.gz")
    p.add_argument("--split", default="test_2016_flickr", help="split name (test_2016_flickr)")
    p.add_argument("--limit", type=_positive_int, help="only the first N sentences")
    p.add_argument("--output", help="also write the translations to this file")
    p.add_argument("--json", metavar="FILE", help="append the result as a record to this JSON list "
                                                   "(read by `lowbit report`)")
    _add_decode_args(p, beam_default=5)


def models_arguments(p: argparse.ArgumentParser) -> None:
    """``lowbit models`` takes no flags."""


def import_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", help="MarianMT directory (config.json, model.safetensors or pytorch_model.bin, "
                               "source.spm, target.spm, vocab.json)")
    p.add_argument("-o", "--out", required=True, help="output checkpoint directory")


def _export_arguments(p: argparse.ArgumentParser, what: str) -> None:
    _model_argument(p)
    p.add_argument("-o", "--out", required=True, help="output directory")
    p.add_argument("--force", action="store_true", help=f"replace OUT if it holds {what}")


def export_hf_arguments(p: argparse.ArgumentParser) -> None:
    _export_arguments(p, "a Hugging Face MarianMT directory")


def export_ct2_arguments(p: argparse.ArgumentParser) -> None:
    _export_arguments(p, "a CTranslate2 model directory")
    p.add_argument("--quantization", help="CTranslate2 weight type: int8, int8_float32, int16, "
                                          "float16, bfloat16, ... (default: float32)")


def demo_arguments(p: argparse.ArgumentParser) -> None:
    from .checkpoint import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data-dir", help="directory with SPLIT.{en,de}.gz")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--limit", type=_positive_int, default=1000, help="sentences scored (1000 = all)")
    p.add_argument("--beam", type=_positive_int, default=5, help="beam size for the score (5)")
    p.add_argument("--threads", type=_positive_int, default=1, help="CPU threads (default 1)")
    p.add_argument("--packed", default=",".join(DEMO_PACKED),
                   help="comma-separated packed models that also translate the examples, every "
                        "quantized matmul through the golden integer kernels ('' for none; "
                        f"default {','.join(DEMO_PACKED)})")


def bench_decode_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="shipped name or directory (default model)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--sentences", type=_positive_int, default=200, help="sentences per measurement (200)")
    p.add_argument("--beams", default="1,5", help="comma-separated beam sizes (1,5)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--devices", default="auto", help="comma-separated: cpu,cuda; auto = cpu (+cuda if any)")
    p.add_argument("--threads", default="1", help="comma-separated CPU thread counts to measure (1)")
    p.add_argument("--peer", choices=("ctranslate2",),
                   help="also decode with this runtime in the same run, on the CPU, runs alternating: "
                        "BLEU, sentences/s and the ratio for FP32 (--model and its CTranslate2 "
                        "export) and INT8 (--int8-model and CTranslate2's int8 of the FP32 export)")
    p.add_argument("--int8-model", default="multi30k-en-de-int8",
                   help="lowbit's INT8 model with --peer (multi30k-en-de-int8)")
    p.add_argument("--models",
                   help="comma-separated models (shipped names or directories) decoded in one run "
                        "on the CPU, runs alternating; speeds are given relative to the first "
                        "(e.g. multi30k-en-de,multi30k-en-de-int8,multi30k-en-de-mixed)")
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="timed runs of each runtime with --peer or each model with --models, "
                        "alternating; the fastest counts (1)")


# -- commands ---------------------------------------------------------------------------------

def run_train(args):
    from .data import resolve_data_dir
    from .train import TrainOptions, train

    data_dir = resolve_data_dir(args.data_dir)
    if args.init is None and not args.resume:
        from .train import resolve_config

        resolve_config(args.config, args.vocab_size)     # a bad --config fails before --out
    out = Path(args.out)
    if args.resume:
        if not (out / "train_state.pt").is_file():
            raise LowbitError(f"cannot resume: {out / 'train_state.pt'} does not exist")
    elif int(os.environ.get("RANK", "0")) == 0:     # under torchrun, rank 0 checks and writes
        check_output_dir(out, "--out", inputs=[args.init, args.distill, data_dir],
                         replaceable=lambda p: (p / "train_state.pt").is_file(),
                         kind="training run (use --resume to continue it)")
    opts = TrainOptions(epochs=args.epochs, max_tokens=args.max_tokens, lr=args.lr, warmup=args.warmup,
                        label_smoothing=args.label_smoothing, weight_decay=args.weight_decay,
                        clip_norm=args.clip_norm, seed=args.seed, avg_last=args.avg_last,
                        vocab_size=args.vocab_size, spm_type=args.spm_type, eval_every=args.eval_every,
                        max_train_tokens=args.max_train_tokens, limit=args.limit, val_limit=args.val_limit,
                        save_dtype=args.save_dtype, max_minutes=args.max_minutes,
                        distill=args.distill, distill_weight=args.distill_weight,
                        dropout=args.dropout)
    log = lambda m: print(m, flush=True)  # noqa: E731
    hooks = {}
    if args.qat:
        from .quant.cli import qat_hooks

        hooks["transform_model"], hooks["after_step"] = qat_hooks(
            args.qat, args.init, data_dir, args.qat_phase_steps, log, args.qat_phase_minutes,
            args.qat_word_planes)
    train(data_dir, Path(args.out), args.config, opts, init=args.init, resume=args.resume,
          device=_device(args.device), log=log, **hooks)


def read_input_lines(stream) -> list[str]:
    """Lines of a binary input stream as text. Bytes that are not UTF-8 are replaced by U+FFFD
    (the tokenizer maps it to <unk>) with one warning per such line, so one stray Latin-1 byte
    does not cost the whole input."""
    lines = []
    for number, raw in enumerate(stream, start=1):
        if isinstance(raw, str):    # a text stream (already decoded)
            lines.append(raw.rstrip("\r\n"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            text = raw.decode("utf-8", errors="replace")
            print(f"lowbit: warning: input line {number} is not valid UTF-8 (byte "
                  f"{raw[e.start]:#04x} at offset {e.start}); undecodable bytes replaced by "
                  f"U+FFFD", file=sys.stderr)
        lines.append(text.rstrip("\r\n"))
    return lines


def run_translate(args):
    from .checkpoint import load_model
    from .decode import translate

    _set_threads(args.threads)
    opts = _decode_options(args)
    model, tokenizer, _ = load_model(args.model, _device(args.device))
    lines = read_input_lines(getattr(sys.stdin, "buffer", sys.stdin))
    # a progress bar (stderr) once the input needs more than one batch
    for out in translate(model, tokenizer, lines, opts, progress=len(lines) > args.batch_size):
        sys.stdout.write(out + "\n")
    sys.stdout.flush()


def run_eval(args):
    from .checkpoint import load_model, resolve_model_dir
    from .data import read_parallel, resolve_data_dir
    from .decode import corpus_bleu, translate

    _set_threads(args.threads)
    opts = _decode_options(args)
    data_dir = resolve_data_dir(args.data_dir)
    model_dir = resolve_model_dir(args.model)
    for flag, path in (("--output", args.output), ("--json", args.json)):
        if path is not None:
            check_output_file(path, flag, inputs=[data_dir, model_dir])
    if args.json:
        from .quant.report import read_results

        read_results(args.json)     # a file that is not a results list fails now, not at the end
    src, ref = read_parallel(data_dir, args.split, limit=args.limit)
    model, tokenizer, meta = load_model(args.model, _device(args.device))
    t0 = time.time()
    hyps = translate(model, tokenizer, src, opts, progress=True)
    seconds = time.time() - t0
    if args.output:
        write_text_atomic(Path(args.output), "".join(h + "\n" for h in hyps))
    score, signature = corpus_bleu(hyps, ref)
    print(f"model: {meta['path']}  split: {args.split} ({len(src)} sentences)  beam: {opts.beam}  "
          f"time: {seconds:.1f} s ({len(src) / max(seconds, 1e-9):.1f} sentences/s)")
    print(f"sacreBLEU signature: {signature}")
    if args.json:
        from .quant.report import append_result, eval_record

        append_result(args.json, eval_record(meta, args.split, opts.beam, score, signature, len(src),
                                             seconds, _device(args.device)))
    print(score)


def run_models(args):
    import json

    from .checkpoint import DEFAULT_MODEL, shipped_models

    models = shipped_models()
    if not models:
        print("no shipped models")
        return
    for name, path in models.items():
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 2 ** 20
        note = ""
        meta = path / "meta.json"
        if meta.is_file():
            info = json.loads(meta.read_text(encoding="utf-8"))
            if "description" in info:
                note = info["description"]
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{default}  {size:.1f} MiB  {note}".rstrip())


def run_import_hf(args):
    from .hf import import_hf

    check_output_dir(args.out, "--out", inputs=[args.dir])
    out = import_hf(Path(args.dir), Path(args.out))
    print(f"wrote {out}")


def run_export_hf(args):
    from .hf import export_hf, is_hf_export

    _export(args, is_hf_export, "MarianMT export",
            lambda m, t, out: export_hf(m, t, out, force=args.force))


def run_export_ct2(args):
    from .ct2 import check_quantization, export_ct2, is_ct2_export

    check_quantization(args.quantization)
    _export(args, is_ct2_export, "CTranslate2 model",
            lambda m, t, out: export_ct2(m, t, out, args.quantization, force=args.force))


def _export(args, replaceable, kind: str, export) -> None:
    """export-hf / export-ct2: the output directory is checked before the model is loaded."""
    from .checkpoint import load_model, resolve_model_dir

    check_output_dir(args.out, "--out", inputs=[resolve_model_dir(args.model)], force=args.force,
                     replaceable=replaceable, kind=kind)
    model, tokenizer, _ = load_model(args.model)
    print(f"wrote {export(model, tokenizer, Path(args.out))}")


DEMO_PACKED = ("multi30k-en-de-int8", "multi30k-en-de-mixed")


def run_demo(args):
    from .checkpoint import load_model
    from .data import FETCH_COMMAND, default_data_dir, read_parallel, resolve_data_dir
    from .decode import DecodeOptions, corpus_bleu, translate

    # Without data the demo still translates; the score part then names the command that fetches
    # the data. A --data-dir that does not exist stays an error (and is found before any work).
    have_data = args.data_dir is not None or default_data_dir().is_dir()
    data_dir = resolve_data_dir(args.data_dir) if have_data else None
    _set_threads(args.threads)
    model, tokenizer, meta = load_model(args.model)
    examples = ["A dog is running through the snow.",  # written for the demo, not from Multi30k
                "Two women are sitting on a bench in the park.",
                "A man in a red shirt is riding a bicycle.",
                "Children are playing with a ball on the beach."]
    print(f"model: {meta['path']}")
    for src, hyp in zip(examples, translate(model, tokenizer, examples, DecodeOptions(beam=5))):
        print(f"  EN: {src}\n  DE: {hyp}")
    for name in [n.strip() for n in args.packed.split(",") if n.strip()]:
        packed, packed_tok, packed_meta = load_model(name)
        stats = packed_meta.get("stats", {})
        print(f"packed model {name}: scheme {packed_meta.get('scheme')}, "
              f"{stats.get('bits_per_weight', 0):.2f} bits per weight, "
              f"{stats.get('integer_matmuls')}/{stats.get('matmuls')} matmuls on integer kernels")
        for hyp in translate(packed, packed_tok, examples, DecodeOptions(beam=5)):
            print(f"  DE: {hyp}")
    if data_dir is None:
        print(f"no Multi30k data in {default_data_dir()}; for the BLEU score on {args.split}, "
              f"fetch it with:\n  {FETCH_COMMAND}")
        return 0
    src, ref = read_parallel(data_dir, args.split, limit=args.limit)
    t0 = time.time()
    hyps = translate(model, tokenizer, src, DecodeOptions(beam=args.beam), progress=True)
    score, signature = corpus_bleu(hyps, ref)
    kind = "greedy" if args.beam == 1 else f"beam {args.beam}"
    print(f"{args.split}: {len(src)} sentences, {kind}, {time.time() - t0:.1f} s")
    print(f"sacreBLEU signature: {signature}")
    print(score)


def run_bench_decode(args):
    import torch

    from .checkpoint import load_model
    from .data import read_parallel, resolve_data_dir
    from .decode import DecodeOptions, translate

    def int_list(text, option):
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise LowbitError(f"{option} must be comma-separated integers, not {text!r}") from None
        if any(v < 1 for v in values):
            raise LowbitError(f"{option} values must be positive, not {text!r}")
        return values

    beams = int_list(args.beams, "--beams")
    threads = int_list(args.threads, "--threads")
    if args.peer and args.models:
        raise LowbitError("--peer and --models are separate measurements: give one of them")
    if args.peer or args.models:
        if args.devices not in ("auto", "cpu"):
            raise LowbitError(f"--{'peer' if args.peer else 'models'} measures on the CPU: "
                              f"leave out --devices")
    if args.peer:
        return _bench_decode_peer(args, beams, threads)
    if args.models:
        if args.model:
            raise LowbitError("--models names every model measured: leave out --model")
        models = [m.strip() for m in args.models.split(",")]
        if not all(models) or len(set(models)) != len(models):
            raise LowbitError(f"--models must be distinct comma-separated model names, "
                              f"not {args.models!r}")
        return _bench_decode_models(args, models, beams, threads)
    if args.devices == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [_device(d) for d in args.devices.split(",")]
    src, _ = read_parallel(resolve_data_dir(args.data_dir), args.split, limit=args.sentences)
    rows = []
    for device in devices:
        model, tokenizer, meta = load_model(args.model, device)
        for n_threads in threads if device == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(n_threads)
            translate(model, tokenizer, src[:8], DecodeOptions(beam=1), device=device)  # warm-up
            for beam in beams:
                opts = DecodeOptions(beam=beam, batch_size=args.batch_size)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                translate(model, tokenizer, src, opts, device=device)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - t0
                name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{n_threads} thread(s)"
                rows.append((device, name, "greedy" if beam == 1 else f"beam {beam}", len(src), seconds))
    print(f"model: {meta['path']}  split: {args.split}  batch size: {args.batch_size}")
    print(f"{'device':<7} {'where':<24} {'search':<8} {'sentences':>9} {'seconds':>8} {'sent/s':>8}")
    for device, name, search, n, seconds in rows:
        print(f"{device:<7} {name[:24]:<24} {search:<8} {n:>9} {seconds:>8.2f} {n / seconds:>8.1f}")


def _bench_decode_models(args, names: list[str], beams: list[int], threads: list[int]) -> None:
    """``bench decode --models A,B,...``: every model decodes the same sentences on the CPU with
    the same threads, runs alternating (forward, then backward order), the fastest of
    ``--repeats`` counting; speeds per wall-clock second and per second of the process's CPU
    time (the steadier one on a shared machine), both also relative to the first model."""
    import torch

    from .checkpoint import load_model
    from .data import read_parallel, resolve_data_dir
    from .decode import DecodeOptions, translate

    src, _ = read_parallel(resolve_data_dir(args.data_dir), args.split, limit=args.sentences)
    models = {name: load_model(name, "cpu") for name in names}
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for model, tokenizer, _ in models.values():  # warm-up
            translate(model, tokenizer, src[:8], DecodeOptions(beam=1, batch_size=args.batch_size))
        for beam in beams:
            opts = DecodeOptions(beam=beam, batch_size=args.batch_size)
            wall, cpu = {}, {}
            for repeat in range(args.repeats):
                for name in (names if repeat % 2 == 0 else names[::-1]):
                    model, tokenizer, _ = models[name]
                    t0, c0 = time.perf_counter(), time.process_time()
                    translate(model, tokenizer, src, opts)
                    wall[name] = min(wall.get(name, float("inf")), time.perf_counter() - t0)
                    cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - c0)
            for name in names:
                rows.append((name, n_threads, "greedy" if beam == 1 else f"beam {beam}",
                             len(src) / wall[name], wall[names[0]] / wall[name],
                             len(src) / cpu[name], cpu[names[0]] / cpu[name]))
    print(f"split: {args.split} ({len(src)} sentences)  batch size: {args.batch_size}  device: cpu  "
          f"runs: {args.repeats} each, alternating, fastest counted")
    width = max(len(n) for n in names)
    print(f"{'model':<{width}} {'threads':>7} {'search':<8} {'sent/s':>8} {'x first':>7} "
          f"{'sent/CPU-s':>10} {'x first':>7}")
    for name, n_threads, search, speed, ratio, cpu_speed, cpu_ratio in rows:
        print(f"{name:<{width}} {n_threads:>7} {search:<8} {speed:>8.1f} {ratio:>7.2f} "
              f"{cpu_speed:>10.1f} {cpu_ratio:>7.2f}")


def _bench_decode_peer(args, beams: list[int], threads: list[int]) -> None:
    """``bench decode --peer ctranslate2``: lowbit and CTranslate2 on the same sentences, runs
    alternating, with the same number of CPU threads. CTranslate2 decodes twice: with lowbit's
    per-sentence length limits (sentences of equal length together: lowbit's translations) and
    batched as CTranslate2 batches (one limit per call). Speeds are per wall-clock second and per
    second of the process's CPU time (the steadier one on a machine shared with other work)."""
    import tempfile

    import torch

    from .checkpoint import DEFAULT_MODEL, load_model
    from .ct2 import Ct2Translator, export_ct2
    from .data import read_parallel, resolve_data_dir
    from .decode import DecodeOptions, corpus_bleu, translate

    src, ref = read_parallel(resolve_data_dir(args.data_dir), args.split, limit=args.sentences)
    fp32 = load_model(args.model or DEFAULT_MODEL)
    int8 = load_model(args.int8_model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowbit-ct2-") as tmp:
        exports = {"FP32": export_ct2(*fp32[:2], Path(tmp) / "fp32"),
                   "INT8": export_ct2(*fp32[:2], Path(tmp) / "int8", quantization="int8")}
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for precision, (model, tokenizer, _) in (("FP32", fp32), ("INT8", int8)):
                peer = Ct2Translator(exports[precision], threads=n_threads)
                runs = {"lowbit": lambda o: translate(model, tokenizer, src, o),
                        "ctranslate2": lambda o: peer.translate(src, o),
                        "ctranslate2 batched": lambda o: peer.translate(src, o, exact_limits=False)}
                for run in runs.values():  # warm-up
                    run(DecodeOptions(beam=1, batch_size=args.batch_size))
                for beam in beams:
                    opts = DecodeOptions(beam=beam, batch_size=args.batch_size)
                    wall, cpu, hyps = {}, {}, {}
                    for repeat in range(args.repeats):
                        for name in (list(runs) if repeat % 2 == 0 else list(runs)[::-1]):
                            t0, c0 = time.perf_counter(), time.process_time()
                            hyps[name] = runs[name](opts)
                            wall[name] = min(wall.get(name, float("inf")), time.perf_counter() - t0)
                            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - c0)
                    for name in runs:
                        same = sum(a == b for a, b in zip(hyps[name], hyps["lowbit"]))
                        rows.append((precision, n_threads, "greedy" if beam == 1 else f"beam {beam}", name,
                                     corpus_bleu(hyps[name], ref)[0].score, len(src) / wall[name],
                                     wall["lowbit"] / wall[name], len(src) / cpu[name], same))
    print(f"FP32: {fp32[2]['path']}  INT8: {int8[2]['path']} (golden integer kernels) / CTranslate2 "
          f"int8 of the FP32 export")
    print(f"split: {args.split} ({len(src)} sentences)  batch size: {args.batch_size}  "
          f"runs: {args.repeats} each, fastest counted")
    print(f"{'precision':<9} {'threads':>7} {'search':<8} {'runtime':<20} {'BLEU':>6} {'sent/s':>8} "
          f"{'x lowbit':>8} {'sent/CPU-s':>10} {'same as lowbit':>14}")
    for precision, n_threads, search, name, bleu, speed, ratio, cpu_speed, same in rows:
        print(f"{precision:<9} {n_threads:>7} {search:<8} {name:<20} {bleu:>6.2f} {speed:>8.1f} "
              f"{ratio:>8.2f} {cpu_speed:>10.1f} {f'{same}/{len(src)}':>14}")
