"""``lowbit bench accel``: what the integer-only accelerator would deliver, from co-simulation.

The integer-only package is co-simulated (:mod:`lowbit.sim.cosim`): every matmul on its matmul
unit, every other operation on its vector unit (:mod:`lowbit.sim.cosim_ops`), each result
checked by equality, and each unit's simulated cycles counted. From those counts and a stated
model of the rest, the benchmark reports cycles per token and per sentence, the share of each
operation kind, and sentences/s at a clock frequency; in the same run it measures the CPU decode
of the same sentences (lowbit's FP32 model and the golden integer decodes) for the ratio.

The model (docs/accelerator.md says the same, with its limits):

* **compute**: the operations run one after another (one sequencer issuing one operation at a
  time; no two units overlap), each taking the cycles its unit took in co-simulation, from the
  first beat offered to the last result taken (operand streams arrive at one beat per cycle);
* **weight traffic**: on-chip memory holds activations, the key/value cache and the position
  table; the weights stream from external memory at ``--mem-bytes-per-cycle``: the encoder's
  weights once per batch, the decoder's (and the output layer's) once per decode step, and one
  embedding row per token. Reported both added to compute (no overlap) and overlapped with it
  (the larger of the two);
* **clock**: ``--fmax`` MHz, or the Fmax that ``lowbit bench fpga`` recorded in
  bench/fpga.json for the same matmul array on ``--board``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import check_output_file, write_bytes_atomic, write_text_atomic

FPGA_RESULTS = Path(__file__).resolve().parents[1] / "bench" / "fpga.json"
CPU_MODELS = ("multi30k-en-de", "multi30k-en-de-int8")   # FP32 and the INT8 golden decode


def bench_accel_arguments(p) -> None:
    p.add_argument("--model", default="multi30k-en-de-int8i",
                   help="integer-only package (default multi30k-en-de-int8i)")
    p.add_argument("--data-dir")
    p.add_argument("--split", default="test_2016_flickr")
    p.add_argument("--sentences", type=int, default=20, help="sentences measured (default 20)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="sentences decoded together by the accelerator (default 8)")
    p.add_argument("--rows", type=int, default=4, help="matmul array rows (default 4)")
    p.add_argument("--cols", type=int, default=4, help="matmul array columns (default 4)")
    p.add_argument("--vector-lanes", type=int, default=8,
                   help="elements per beat of the vector units (default 8)")
    p.add_argument("--mem-bytes-per-cycle", type=float, default=2.0,
                   help="external memory bandwidth in bytes per clock cycle (default 2: the "
                        "ULX3S's 16-bit SDRAM at the fabric clock)")
    p.add_argument("--fmax", type=float, metavar="MHZ",
                   help="clock in MHz (default: bench/fpga.json's Fmax of the same matmul array "
                        "on --board)")
    p.add_argument("--board", default="ulx3s-85f", help="board for the default --fmax "
                                                        "(default ulx3s-85f)")
    p.add_argument("--cpu-threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--jobs", type=int, default=1, help="co-simulation processes (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")
    p.add_argument("--plot", metavar="FILE", help="write a PNG of where the cycles go")


# ---------------------------------------------------------------------------------------------


def fpga_fmax(board: str, unit: str, rows: int, cols: int, path: Path = FPGA_RESULTS):
    """The highest Fmax (MHz) recorded for ``unit``'s ``rows x cols`` array on ``board`` in
    bench/fpga.json (any DSP mode), or None."""
    try:
        records = json.loads(path.read_text())["records"]
    except (OSError, ValueError, KeyError):
        return None
    best = None
    for rec in records.values():
        c, r = rec.get("config", {}), rec.get("result") or {}
        if (c.get("board"), c.get("unit"), c.get("rows"), c.get("cols")) == (board, unit, rows,
                                                                              cols):
            f = r.get("fmax_mhz")
            if f and (best is None or f > best):
                best = f
    return best


def weight_bytes(model) -> tuple[int, int]:
    """``(encoder bytes, decoder bytes per step)`` of the weights streamed from memory: every
    quantized matmul's weights at their width plus a 32-bit bias, multiplier and 8-bit shift per
    output channel; the output layer counts with the decoder. Q.K^T and attention.V have no
    weights (both operands are activations)."""
    enc = dec = 0
    for name, m in model.named_modules():
        site = getattr(m, "site", None)
        weight = getattr(m, "weight", None)
        if site is None or weight is None or weight.dim() != 2:
            continue
        out_ch, in_ch = weight.shape
        w_bits = site.params.get("w_bits", site.params.get("bits", 8))
        size = math.ceil(out_ch * in_ch * w_bits / 8) + out_ch * (4 + 4 + 1)
        if ".encoder." in f".{name}.":
            enc += size
        else:
            dec += size
    return enc, dec


def _check(args) -> None:
    for flag, value, lo, hi in (("--sentences", args.sentences, 1, 1000),
                                ("--batch-size", args.batch_size, 1, 1000),
                                ("--rows", args.rows, 1, 64), ("--cols", args.cols, 1, 64),
                                ("--vector-lanes", args.vector_lanes, 1, 64),
                                ("--cpu-threads", args.cpu_threads, 1, 256),
                                ("--jobs", args.jobs, 1, 256)):
        if not lo <= value <= hi:
            raise LowbitError(f"{flag} must be an integer in {lo}..{hi}, not {value}")
    if not (math.isfinite(args.mem_bytes_per_cycle) and args.mem_bytes_per_cycle > 0):
        raise LowbitError(f"--mem-bytes-per-cycle must be a positive number, not "
                          f"{args.mem_bytes_per_cycle}")
    if args.fmax is not None and not (math.isfinite(args.fmax) and args.fmax > 0):
        raise LowbitError(f"--fmax must be a positive number of MHz, not {args.fmax}")


def _cpu_speed(names, sentences, threads: int, batch_size: int, log) -> dict:
    """Greedy decode of ``sentences`` on the CPU by each model: sentences per second (runs
    alternating, forward then backward, the faster of the two counting)."""
    import torch

    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.decode import DecodeOptions, translate

    torch.set_num_threads(threads)
    models = {n: load_model(n, "cpu")[:2] for n in names}
    opts = DecodeOptions(beam=1, batch_size=batch_size)
    best = {}
    for order in (names, list(reversed(names))):
        for n in order:
            model, tok = models[n]
            t0 = time.perf_counter()
            translate(model, tok, sentences, opts, device="cpu")
            rate = len(sentences) / (time.perf_counter() - t0)
            best[n] = max(best.get(n, 0.0), rate)
            log(f"cpu {n}: {rate:.2f} sentences/s")
    return best


def run_bench_accel(args) -> int:
    from lowbit.hw.units import unit_class
    from lowbit.sw.checkpoint import load_model

    from .cosim import CosimOptions, cosim_split, encode_sentences
    from .cosim_kernels import units_for_model
    from .cosim_ops import OP_UNITS
    from .cosim_cli import ops_line, packed_model_dir, read_sentences

    _check(args)
    model_dir = packed_model_dir(args.model)
    inputs = [model_dir]
    for flag in ("--json", "--plot"):
        path = getattr(args, flag.lstrip("-"))
        if path is not None:
            check_output_file(path, flag, inputs=inputs)
    model, tokenizer, _ = load_model(model_dir)
    if not getattr(model, "integer_only", False):
        raise LowbitError(f"{args.model} is not an integer-only package: bench accel needs "
                          f"every operation on RTL (scheme int8i, e.g. multi30k-en-de-int8i)")
    matmul_units = sorted({kind for kind, _ in units_for_model(model)})
    fmax, fmax_from = args.fmax, "--fmax"
    if fmax is None:
        found = [fpga_fmax(args.board, unit, args.rows, args.cols) for unit in matmul_units]
        if not found or None in found:
            raise LowbitError(f"bench/fpga.json has no Fmax for a {args.rows}x{args.cols} "
                              f"{'/'.join(matmul_units)} array on {args.board}: build it with "
                              f"`lowbit bench fpga` or give --fmax MHZ")
        fmax, fmax_from = min(found), f"lowbit bench fpga, {args.board}"
    sentences = read_sentences(args, args.sentences)
    opts = CosimOptions(rows=args.rows, cols=args.cols, vector_lanes=args.vector_lanes,
                        batch_size=args.batch_size, jobs=args.jobs)
    log = lambda m: print(m, flush=True)  # noqa: E731
    from tqdm import tqdm

    with tqdm(total=len(sentences), unit="sent", desc="bench accel", file=sys.stderr,
              disable=None) as bar:
        report = cosim_split(model_dir, sentences, opts, progress=bar.update, log=log)
    if not report.ok:
        from .cosim_kernels import CosimMismatch

        if report.mismatch is not None:
            print(CosimMismatch(report.mismatch).message())
        print(f"identical: {report.identical}/{report.sentences} sentences")
        return 1
    kinds_of_op = {unit: op for op, unit in OP_UNITS.items() if unit}
    cycles: dict = {}
    matmul_ideal = sum(u.ideal_cycles for u in report.units
                       if unit_class(u.unit).family != "vector")
    for u in report.units:
        vector = unit_class(u.unit).family == "vector"
        key = kinds_of_op.get(u.unit, u.unit) if vector else f"{u.unit} matmul"
        cycles[key] = cycles.get(key, 0) + u.cycles
    compute = sum(cycles.values())
    matmul_cycles = sum(c for k, c in cycles.items() if k.endswith(" matmul"))
    steps = report.ops.get("argmax", [0, 0])[1]
    n = report.sentences
    batches = math.ceil(n / args.batch_size)
    tokens = sum(len(t) + 1 for t in report.translations.values())   # with the EOS
    enc_bytes, dec_bytes = weight_bytes(model)
    src_tokens = sum(len(ids) for ids in encode_sentences(tokenizer, sentences, 256, lambda m: None)
                     if ids is not None)
    # one embedding row (d_model 8-bit entries) per source and per output token
    mem_bytes = (batches * enc_bytes + steps * dec_bytes
                 + (src_tokens + tokens) * model.config.d_model)
    mem_cycles = mem_bytes / args.mem_bytes_per_cycle
    serial, overlapped = compute + mem_cycles, max(compute, mem_cycles)
    hz = fmax * 1e6
    cpu = _cpu_speed([*CPU_MODELS, args.model], sentences, args.cpu_threads, 64, log)
    rows = [(k, c) for k, c in sorted(cycles.items(), key=lambda kv: -kv[1])]
    rows.append(("weight traffic (memory)", mem_cycles))
    total = compute + mem_cycles
    print(f"model {args.model}: {n} sentences of {args.split}, {tokens} output tokens, "
          f"batches of {args.batch_size}, {args.rows}x{args.cols} matmul array, "
          f"{args.vector_lanes}-lane vector units, {args.mem_bytes_per_cycle:g} bytes/cycle, "
          f"{fmax:.1f} MHz ({fmax_from})")
    print(f"{'operation':<26} {'cycles':>14} {'share':>7} {'per token':>11}")
    for k, c in rows:
        print(f"{k:<26} {c:>14,.0f} {100 * c / total:>6.1f}% {c / tokens:>11,.0f}")
    summary = {"model": args.model, "split": args.split, "sentences": n, "tokens": tokens,
               "batch_size": args.batch_size, "rows": args.rows, "cols": args.cols,
               "vector_lanes": args.vector_lanes, "fmax_mhz": fmax, "fmax_from": fmax_from,
               "mem_bytes_per_cycle": args.mem_bytes_per_cycle, "cycles": cycles,
               "compute_cycles": compute, "memory_bytes": mem_bytes, "memory_cycles": mem_cycles,
               "decode_steps": steps, "batches": batches,
               "matmul_utilisation": matmul_ideal / matmul_cycles if matmul_cycles else 0.0,
               "cycles_per_token": {"serial": serial / tokens, "overlapped": overlapped / tokens},
               "cycles_per_sentence": {"serial": serial / n, "overlapped": overlapped / n},
               "accel_sentences_per_second": {"serial": n * hz / serial,
                                              "overlapped": n * hz / overlapped},
               "cpu_sentences_per_second": cpu, "cpu_threads": args.cpu_threads,
               "ops": report.ops}
    print(f"matmul array utilisation {100 * summary['matmul_utilisation']:.1f}% (ideal cycles: "
          f"MACs / array PEs)")
    print(f"{'':<26} {'cycles/token':>14} {'cycles/sent':>12} {'sent/s':>9}")
    for what, c in (("accelerator, serial", serial), ("accelerator, overlapped", overlapped)):
        print(f"{what:<26} {c / tokens:>14,.0f} {c / n:>12,.0f} {n * hz / c:>9.2f}")
    for name, rate in cpu.items():
        print(f"{'cpu ' + name:<26} {'':>14} {'':>12} {rate:>9.2f}")
    fp32 = cpu[CPU_MODELS[0]]
    print(f"accelerator / CPU FP32 ({args.cpu_threads} thread(s)): serial "
          f"{n * hz / serial / fp32:.2f}x, overlapped {n * hz / overlapped / fp32:.2f}x")
    if args.json:
        write_text_atomic(Path(args.json), json.dumps(summary, indent=1) + "\n")
    if args.plot:
        write_bytes_atomic(Path(args.plot), cycle_plot(
            rows, title=f"{args.model}: where the cycles go ({args.rows}x{args.cols} array, "
                        f"{args.mem_bytes_per_cycle:g} bytes/cycle)"))
    print(ops_line(report))
    print(f"identical: {report.identical}/{report.sentences} sentences")
    return 0


def cycle_plot(rows, title: str) -> bytes:
    """A horizontal bar chart (PNG bytes) of ``(label, cycles)`` rows, as shares of the total."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    total = sum(c for _, c in rows)
    labels = [k for k, _ in rows][::-1]
    shares = [100 * c / total for _, c in rows][::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.2), dpi=100)
    ax.barh(labels, shares, color="#4878a8")
    for y, s in enumerate(shares):
        ax.text(s + 0.5, y, f"{s:.1f}%", va="center", fontsize=8)
    ax.set_xlabel("share of cycles (%)")
    ax.set_xlim(0, max(shares) * 1.15 + 1)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()
