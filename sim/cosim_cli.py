"""``lowbit cosim`` (translate a split through the Verilated units, checked against the golden
kernels) and ``lowbit bench cosim`` (its speed, projected to the full 1000-sentence split).

Their flags and handlers (listed in :data:`lowbit.commands.COMMANDS`); the work is done by
:mod:`lowbit.sim.cosim`.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from lowbit import LowbitError
from lowbit.contract import DEFAULT_MAX_K
from lowbit.io import write_text_atomic

FULL_SPLIT = 1000   # sentences of a Multi30k test split: the size the benchmark projects to
UNITS_ARRAY = (8, 8)        # default PE array (rows, cols) of the matmul units
SEQUENCER_ARRAY = (4, 16)   # ... of the sequencer's matmul unit (--engine sequencer)


def _add_common(p, *, jobs_default) -> None:
    p.add_argument("--model", required=True,
                   help="packed model directory (written by `lowbit quantize`) or shipped name")
    p.add_argument("--data-dir", help="directory with SPLIT.{en,de}.gz (default: "
                                      "$LOWBIT_DATA_DIR or ~/.local/share/lowbit/multi30k)")
    p.add_argument("--split", default="test_2016_flickr",
                   help="split name (default test_2016_flickr)")
    p.add_argument("--jobs", type=int, default=jobs_default,
                   help=f"worker processes, each with its own Verilated units (default "
                        f"{jobs_default}: the CPU cores)")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--batch-size", type=int,
                   help="sentences decoded together; every matmul covers the whole batch "
                        "(default 64; with --engine sequencer the array's --rows)")
    p.add_argument("--rows", type=int,
                   help="PE array rows of every unit (default 8; with --engine sequencer 4)")
    p.add_argument("--cols", type=int,
                   help="PE array columns (default 8; with --engine sequencer 16)")
    p.add_argument("--max-k", type=int, default=DEFAULT_MAX_K,
                   help=f"the units' largest K (default {DEFAULT_MAX_K}, the contract's; it must "
                        f"cover the model's widest matmul)")
    p.add_argument("--lanes", type=int, default=32, help="XNOR unit lanes (default 32)")
    p.add_argument("--vector-lanes", type=int, default=8,
                   help="elements per beat of the vector units that run the integer-only "
                        "model's other operations (default 8)")
    p.add_argument("--engine", choices=("units", "sequencer"), default="units",
                   help="units (default): each operation on its own Verilated unit; sequencer: "
                        "whole sentences greedily on the Verilated sequencer top, the host "
                        "sending only token ids (integer-only packages)")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="", default=None,
                   help="send the batches to --jobs Ray workers: the cluster at ADDRESS, or "
                        "without one a local Ray instance (docs/regress.md)")
    # Test hook (docs/cosim.md): with --ray, the worker of the first batch dies once.
    p.add_argument("--crash-once", metavar="MARKER", help=argparse_suppress())


def cosim_arguments(p) -> None:
    _add_common(p, jobs_default=os.cpu_count() or 1)
    p.add_argument("--limit", type=int, help="only the first N sentences")
    p.add_argument("--output", help="write the RTL's translations to this file")
    p.add_argument("--json", metavar="FILE", help="write the run's numbers to this JSON file")
    # Test hook (docs/cosim.md): flip one bit of the RTL's output in matmul call N of the first
    # batch; the run must then report a mismatch.
    p.add_argument("--plant-mismatch", type=int, metavar="CALL", help=argparse_suppress())
    # Test hook (docs/cosim.md): build every unit as a faulty RTL variant (lowbit.hw.faults,
    # e.g. drop-lsb: every PE product loses bit 0); the run must report the first mismatch.
    p.add_argument("--rtl-fault", metavar="FAULT", help=argparse_suppress())


def bench_cosim_arguments(p) -> None:
    _add_common(p, jobs_default=os.cpu_count() or 1)
    p.add_argument("--sentences", type=int, default=100,
                   help="sentences measured (default 100; 1000 = the whole split)")
    p.add_argument("--json", metavar="FILE", help="also write the numbers to this JSON file")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


# ---------------------------------------------------------------------------------------------


def _options(args):
    from lowbit.sim.cosim import CosimOptions

    if args.engine == "sequencer" and args.beam != 1:
        raise LowbitError(f"--engine sequencer decodes greedily (--beam 1), not --beam "
                          f"{args.beam}")
    # The sequencer's decoder step has one matmul row per sentence of a batch: its default
    # array is wide rather than tall, and a batch fills its rows.
    default = SEQUENCER_ARRAY if args.engine == "sequencer" else UNITS_ARRAY
    args.rows = default[0] if args.rows is None else args.rows
    args.cols = default[1] if args.cols is None else args.cols
    if args.batch_size is None:     # the sequencer: one matmul row per sentence of a batch
        args.batch_size = args.rows if args.engine == "sequencer" else 64
    if args.engine == "sequencer":
        from lowbit.hw.sequencer import check_array
        from lowbit.sim.cosim import SEQUENCER_NOT_ON_RAY

        if args.ray is not None:
            raise LowbitError(SEQUENCER_NOT_ON_RAY)
        try:
            check_array(args.rows, args.cols, ("--rows", "--cols"))
        except ValueError as e:
            raise LowbitError(str(e)) from None
    for flag, value, lo, hi in (("--jobs", args.jobs, 1, 256), ("--beam", args.beam, 1, 64),
                                ("--batch-size", args.batch_size, 1, 100_000),
                                ("--rows", args.rows, 1, 64), ("--cols", args.cols, 1, 64),
                                ("--max-k", args.max_k, 1, 1 << 30),
                                ("--lanes", args.lanes, 1, 256),
                                ("--vector-lanes", args.vector_lanes, 1, 64)):
        if not lo <= value <= hi:
            raise LowbitError(f"{flag} must be an integer in {lo}..{hi}, not {value}")
    return CosimOptions(rows=args.rows, cols=args.cols, max_k=args.max_k, lanes=args.lanes,
                        vector_lanes=args.vector_lanes,
                        beam=args.beam, batch_size=args.batch_size, jobs=args.jobs,
                        plant_fault=getattr(args, "plant_mismatch", None),
                        ray=args.ray, crash_once=args.crash_once, engine=args.engine,
                        rtl_fault=_rtl_fault(getattr(args, "rtl_fault", None)))


def _rtl_fault(name):
    from lowbit.hw.faults import FAULTS, VECTOR_FAULTS

    names = list(FAULTS) + list(VECTOR_FAULTS)
    if name is not None and name not in names:
        raise LowbitError(f"--rtl-fault must be one of {', '.join(names)}, not {name!r}")
    return name


def read_sentences(args, limit):
    """The first ``limit`` source sentences of ``--split`` in ``--data-dir`` (all if None)."""
    from lowbit.sw.data import read_parallel, resolve_data_dir

    if limit is not None and limit < 1:
        raise LowbitError(f"--limit must be a positive integer, not {limit}")
    data_dir = resolve_data_dir(args.data_dir)
    src, _ = read_parallel(data_dir, args.split, limit=limit)
    if not src:
        raise LowbitError(f"split {args.split} in {data_dir} has no sentences")
    return src


def packed_model_dir(name: str) -> str:
    """The directory of packed model ``name`` (shipped name or path); LowbitError otherwise."""
    from lowbit.sw.checkpoint import resolve_model_dir
    from lowbit.sw.quant.packed import is_packed

    path = resolve_model_dir(name)
    if not is_packed(path):
        raise LowbitError(f"{name} is not a packed model: co-simulation runs the integer "
                          f"matmuls of a package written by `lowbit quantize --scheme ...`")
    return str(path)


def _run(args, sentences, opts, desc):
    from tqdm import tqdm

    from lowbit.sim.cosim import cosim_split
    from lowbit.sw.quant.packed import read_manifest

    model_dir = packed_model_dir(args.model)
    scheme = read_manifest(model_dir)["scheme"]
    mode = "greedy" if opts.beam == 1 else f"beam {opts.beam}"
    if opts.engine == "sequencer":
        how = f"batches of {opts.batch_size} on the Verilated sequencer top"
    else:
        how = f"batches of {opts.batch_size}, {opts.rows}x{opts.cols} arrays"
    print(f"model {args.model}: scheme {scheme}; {len(sentences)} sentences of {args.split}, "
          f"{mode}, {how}, {opts.jobs} job(s)", flush=True)
    with tqdm(total=len(sentences), unit="sent", desc=desc, file=sys.stderr,
              disable=None) as bar:
        report = cosim_split(model_dir, sentences, opts, progress=bar.update,
                             log=lambda m: print(m, flush=True))
    return report, scheme


def _unit_table(report) -> list[str]:
    lines = [f"{'unit':<6} {'parameters':<44} {'calls':>7} {'MACs':>14} {'cycles':>14} "
             f"{'util':>6} {'sim s':>8} {'cycles/s':>10}"]
    for u in report.units:
        par = " ".join(f"{k}={v}" for k, v in u.params.items() if k not in ("rows", "cols"))
        speed = u.cycles / u.sim_seconds if u.sim_seconds else 0.0
        lines.append(f"{u.unit:<6} {par:<44} {u.calls:>7} {u.macs:>14,} {u.cycles:>14,} "
                     f"{100 * u.utilisation:>5.1f}% {u.sim_seconds:>8.1f} {speed / 1e6:>9.2f}M")
    return lines


def _sequencer_table(report) -> list[str]:
    """Cycles per program run and per sentence, and each command kind's share."""
    total = report.cycles
    sentences = report.programs.get("encoder pass", [0, 0])[0]
    lines = [f"{'program':<14} {'runs':>7} {'cycles':>16} {'cycles/run':>14}"]
    rows = [(name, *report.programs[name]) for name in ("encoder pass", "decoder step")
            if name in report.programs]
    rows.append(("sentence", sentences, total))
    for name, runs, cycles in rows:
        lines.append(f"{name:<14} {runs:>7} {cycles:>16,} {cycles / max(1, runs):>14,.0f}")
    lines.append(f"{'command':<14} {'runs':>7} {'cycles':>16} {'share':>14}")
    for u in sorted(report.units, key=lambda u: -u.cycles):
        lines.append(f"{u.unit:<14} {u.calls:>7} {u.cycles:>16,} "
                     f"{100 * u.cycles / max(1, total):>13.1f}%")
    return lines


def _summary(report) -> dict:
    done = report.identical + len(report.differing)
    wall = report.seconds
    return {"sentences": report.sentences, "checked": done, "identical": report.identical,
            "seconds": round(wall, 2), "build_seconds": round(report.build_seconds, 2),
            "sentences_per_second": done / wall if wall else 0.0,
            "cycles": report.cycles, "ideal_cycles": report.ideal_cycles,
            "utilisation": report.utilisation,
            "sim_seconds": report.sim_seconds,
            "cycles_per_sim_second": report.cycles / report.sim_seconds
            if report.sim_seconds else 0.0,
            "cycles_per_wall_second": report.cycles / wall if wall else 0.0,
            "units": [u.to_dict() for u in report.units], "mismatch": report.mismatch,
            **({"programs": report.programs} if report.programs else {})}


def _print_report(report) -> dict:
    s = _summary(report)
    for line in (_sequencer_table(report) if report.programs else _unit_table(report)):
        print(line)
    print(f"simulated {s['cycles']:,} cycles (ideal {s['ideal_cycles']:,.0f}, array utilisation "
          f"{100 * s['utilisation']:.1f}%) in {s['seconds']:.1f} s wall: "
          f"{s['cycles_per_wall_second'] / 1e6:.2f} M cycles/s overall, "
          f"{s['cycles_per_sim_second'] / 1e6:.2f} M cycles/s inside the harness, "
          f"{s['sentences_per_second']:.2f} sentences/s")
    return s


def _write_json(path, data) -> None:
    from lowbit.sim.bench import write_json

    write_json(path, data)


def _finish(report) -> int:
    if report.mismatch is not None:
        from lowbit.sim.cosim_kernels import CosimMismatch

        print(CosimMismatch(report.mismatch).message())
    for i in report.differing[:5]:
        print(f"TOKENS DIFFER in sentence {i + 1} (RTL decode vs golden decode)")
    if report.ops:
        print(ops_line(report))
    print(f"identical: {report.identical}/{report.sentences} sentences", flush=True)
    return 0 if report.ok else 1


def ops_line(report) -> str:
    """``ops on RTL: N/N (...)``: every operation of the integer-only decode, matmuls included,
    and how many of each ran on an RTL unit."""
    from lowbit.hw.units import unit_class

    parts, rtl, total = [], 0, 0
    for u in report.units:
        if unit_class(u.unit).family != "vector":     # a matmul unit: every call is on RTL
            parts.append(f"{u.unit} matmul {u.calls}")
            rtl, total = rtl + u.calls, total + u.calls
    for op, (on, calls) in report.ops.items():
        parts.append(f"{op} {on}" if on == calls else f"{op} {on}/{calls}")
        rtl, total = rtl + on, total + calls
    return f"ops on RTL: {rtl}/{total} ({', '.join(parts)})"


def _check_outputs(args, *flags) -> None:
    """Every output path of the run, checked before the co-simulation starts."""
    from lowbit.io import check_output_file
    from lowbit.sw.checkpoint import resolve_model_dir

    model = resolve_model_dir(args.model)
    for flag in flags:
        path = getattr(args, flag.lstrip("-").replace("-", "_"))
        if path is not None:
            check_output_file(path, flag, inputs=[model])


def run_cosim(args) -> int:
    opts = _options(args)
    packed_model_dir(args.model)
    _check_outputs(args, "--output", "--json")
    sentences = read_sentences(args, args.limit)
    report, scheme = _run(args, sentences, opts, "cosim")
    summary = _print_report(report)
    if args.output:
        from lowbit.sw.checkpoint import load_model

        _, tokenizer, _ = load_model(packed_model_dir(args.model))
        lines = [tokenizer.decode(report.translations[i], "target")
                 if i in report.translations else "" for i in range(len(sentences))]
        write_text_atomic(Path(args.output), "".join(line + "\n" for line in lines))
    if args.json:
        _write_json(args.json, {"model": args.model, "split": args.split,
                                "scheme": scheme,
                                "options": {k: v for k, v in vars(opts).items()
                                            if k != "harnesses"}, **summary})
    return _finish(report)


def run_bench_cosim(args) -> int:
    opts = _options(args)
    if args.sentences < 1:
        raise LowbitError(f"--sentences must be a positive integer, not {args.sentences}")
    packed_model_dir(args.model)
    _check_outputs(args, "--json")
    sentences = read_sentences(args, args.sentences)
    t0 = time.perf_counter()
    report, scheme = _run(args, sentences, opts, "bench cosim")
    total = time.perf_counter() - t0
    summary = _print_report(report)
    per_sentence = report.seconds / max(1, len(sentences))
    projected = report.build_seconds + per_sentence * FULL_SPLIT
    summary.update({"scheme": scheme, "wall_seconds_with_setup": round(total, 2),
                    "projected_seconds_1000": round(projected, 1), "rows": opts.rows,
                    "cols": opts.cols, "jobs": opts.jobs, "beam": opts.beam,
                    "batch_size": opts.batch_size})
    what = "actual" if len(sentences) >= FULL_SPLIT else "projected"
    print(f"{scheme}: {summary['sentences_per_second']:.2f} sentences/s, "
          f"{summary['cycles_per_wall_second'] / 1e6:.2f} M simulated cycles/s, utilisation "
          f"{100 * report.utilisation:.1f}%; {what} time for {FULL_SPLIT} sentences: "
          f"{projected / 60:.1f} min ({opts.jobs} job(s), {opts.rows}x{opts.cols})")
    if args.json:
        _write_json(args.json, {"model": args.model, "split": args.split, **summary})
    return _finish(report)
