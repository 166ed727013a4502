"""The FPGA bench's tables, plot and docs, and the ``lowbit bench fpga`` command.

Renders the records of ``bench/fpga.json`` (:mod:`lowbit.hw.fpga_bench`) and the cost model
fitted to them (:mod:`lowbit.hw.fpga_fit`): the tables go between the markers of docs/fpga.md
and the plot of cost per MAC against bits to docs/img/fpga_cost_per_mac.png;
:func:`hardware_table` renders the same tables for ``lowbit report`` without building anything.
The command (:func:`run_bench_fpga`) runs the builds, confirms each estimated largest array by
building it (:func:`verify_largest`) and renders; it sits here, above the other two modules, so
that the three import one another without a cycle.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import check_build_dir, check_output_file, write_bytes_atomic, write_text_atomic

from .fpga import BOARDS, FpgaResult, format_table
from .fpga_bench import (MODE, REFERENCE, REPO, RESULTS_PATH, _config, _write_json_atomic,
                         base_params, build_pool, default_configs, fallback_configs,
                         load_results, run_bench)
from .fpga_fit import (LUT_FILL, _shape, bare_comparisons, comparisons, cost_rows, largest_table,
                       macs_per_pe)
from .units import XnorDescription, describe, unit_class, unit_kinds

__all__ = ["hardware_table", "report_section", "plot_points", "render_markdown", "plot_cost",
           "update_docs", "bench_fpga_arguments", "run_bench_fpga"]

DOCS_PATH = REPO / "docs" / "fpga.md"
PLOT_PATH = REPO / "docs" / "img" / "fpga_cost_per_mac.png"
BEGIN, END = "<!-- fpga-table:begin (lowbit bench fpga) -->", "<!-- fpga-table:end -->"

# An XNOR MAC is 1-bit; an INT8-equivalent MAC is this many of them (8 x 8 planes).
INT8_EQ_BINARY_MACS = XnorDescription.int8_eq_macs


def plot_points(records: dict) -> dict:
    """``{board: {series: [(bits per weight, LUT-equivalents per MAC)]}}`` for the plot.

    One series per unit with its PE array in LUT logic (``requant``), one point per precision
    built at two shapes or more; INT8 with its multipliers in DSP blocks (``auto``) is its own
    series. The cost is :func:`~lowbit.hw.fpga_fit.unit_cost`'s ``lut_eq_per_mac``: the
    marginal per-PE LUTs plus DSPs weighted by their share of the device, per MAC at the unit's
    precision.
    """
    out: dict = {}
    for c in cost_rows(records):
        if c["unreliable"]:
            continue
        series = unit_class(c["unit"]).series
        if c["dsp"] == "auto":
            series = "INT8, multipliers in DSPs"
        elif c["dsp"] != MODE:
            continue
        out.setdefault(c["board"], {}).setdefault(series, []).append(
            (c["bits"], c["lut_eq_per_mac"]))
    for series in out.values():
        for pts in series.values():
            pts.sort()
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(rows, columns=header, row=lambda r: r)


def _sort_key(r: FpgaResult):
    extra = {k: v for k, v in r.params.items() if k not in ("rows", "cols")}
    return (list(BOARDS).index(r.board), unit_kinds().index(r.unit), r.dsp_mode,
            json.dumps(extra, sort_keys=True), r.design != "bare",
            r.params["rows"] * r.params["cols"], r.params["cols"])


def _ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def _comparison_table(records: dict) -> str | None:
    rows = []
    for c in comparisons(records):
        cls = unit_class(c["unit"])
        label = f"{c['unit']}{cls.fpga_base.get(cls.bits_param, '')} vs {REFERENCE}"
        if c["measure"] == "marginal":
            what = f"marginal: per-PE slope, per {cls.mac_name}"
        elif c["measure"] == "marginal int8-eq":
            what = f"marginal, per INT8-equivalent MAC ({cls.int8_eq_macs} {cls.mac_name}s)"
        else:
            what = f"whole unit at {c['measure'].split()[1]}, per {cls.mac_name}"
        rows.append([c["board"], label, what, f"{c['int8']:.1f}",
                     f"{c['value']:.2f}", _ratio_text(c["ratio"])])
    if not rows:
        return None
    return _md_table(["board", "comparison", "LUTs per MAC", "INT8", "unit",
                      "INT8 / unit"], rows)


def _cost_table(records: dict) -> str | None:
    rows = []
    for c in cost_rows(records):
        pe = c["per_pe"]
        macs = unit_class(c["unit"]).macs_text(c["macs_per_pe"])
        per_mac = f"{c['lut_per_mac']:.2f}"
        if c["int8_eq_lut_per_mac"] is not None:
            per_mac += f" ({c['int8_eq_lut_per_mac']:.0f} per int8-eq)"
        whole = ", ".join(f"{s}: {v:.0f}" for s, v in c["whole"])
        if c["unreliable"]:
            rows.append([c["board"], c["precision"], c["dsp"], whole,
                         "unreliable fit (" + ", ".join(c["unreliable"]) + ")", macs, "-", "-",
                         f"{c['fmax_mhz']:.1f}"])
            continue
        rows.append([c["board"], c["precision"], c["dsp"], whole,
                     f"{pe['LUT']:.0f} / {pe['FF']:.0f} / {pe['DSP']:.2g}", macs, per_mac,
                     f"{c['lut_eq_per_mac']:.1f}", f"{c['fmax_mhz']:.1f}"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "LUT/MAC whole unit, by array",
                      "per PE: LUT / FF / DSP", "MACs/cycle per PE", "marginal LUT/MAC",
                      "LUT-eq per MAC", "Fmax MHz (worst)"], rows)


def _fmax_table(records: dict) -> str | None:
    """Achieved Fmax of every build of the size sweep against nextpnr's target."""
    rows = []
    for c in cost_rows(records):
        if c["params"] != dict(describe(c["unit"], **base_params(c["unit"])).params,
                               rows=c["params"]["rows"], cols=c["params"]["cols"]):
            continue
        target = c["target_mhz"]
        shape, largest = max(c["fmax"], key=lambda f: _area(f[0]))
        verdict = "-" if target is None else ("met" if largest >= target else "not met")
        rows.append([c["board"], c["precision"], c["dsp"],
                     "board clock" if target is None else f"{target:g}",
                     ", ".join(f"{s}: {v:.1f}" for s, v in c["fmax"]),
                     f"{largest:.1f} at {shape} ({verdict})"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "target MHz", "Fmax MHz by array",
                      "largest array"], rows)


def _area(shape: str) -> int:
    rows, cols = shape.split("x")
    return int(rows) * int(cols)


def _bare_table(records: dict) -> str | None:
    rows = []
    for b in bare_comparisons(records):
        cls = unit_class(b["unit"])
        rows.append([b["board"], b["precision"], b["dsp"],
                     f"{b['per_pe']['LUT']:.0f} + {b['per_pe']['DSP']:.2g} DSP",
                     f"{b['bare']['lut']} + {b['bare']['dsp']} DSP",
                     f"{b['lut_ratio']:.2f}",
                     f"{b['lut_per_mac']:.2f} / {b['bare_lut_per_mac']:.2f} per {cls.mac_name}",
                     f"{b['fmax_mhz']:.1f} / {b['bare']['fmax_mhz']:.1f}"])
    if not rows:
        return None
    return _md_table(["board", "unit", "DSP mode", "unit per PE: LUT", "bare PE: LUT",
                      "unit / bare", "LUT per MAC: unit / bare", "Fmax MHz: unit / bare"], rows)


def _largest_rows(records: dict) -> list[list[str]]:
    rows = []
    for row in largest_table(records):
        fit = row["fit"]
        if fit is None:
            rows.append([row["board"], row["unit"], row["dsp"], "-", "-",
                         "too few builds fit" if row["failed"] else "-",
                         f"fits: {[_shape(r) for r in row['built']]}; does not fit: "
                         f"{[f'{a}x{b}' for a, b in row['failed']]}"])
            continue
        n, model = fit["n"], fit["model"]
        if n is None:
            rows.append([row["board"], row["unit"], row["dsp"], "-", "-", fit["limit"],
                         f"no estimate; from {', '.join(fit['basis'])}"])
            continue
        state = {"verified": f"verified: {n}x{n} fits, "
                             + ("the largest allowed" if n == 64 else f"{n + 1}x{n + 1} does not"),
                 True: f"{n}x{n} built and fits; larger estimated",
                 False: "estimate; its build failed", None: "estimate"}[row["verified"]]
        macs = n * n * macs_per_pe(row["built"][0])
        rows.append([row["board"], row["unit"], row["dsp"], f"{n}x{n}",
                     unit_class(row["unit"]).macs_text(macs), fit["limit"],
                     f"{state}; per PE {model['LUT']['per_pe']:.0f} LUT "
                     f"{model['FF']['per_pe']:.0f} FF {model['DSP']['per_pe']:.1f} DSP, "
                     f"per row {model['LUT'].get('per_row', 0):.0f} LUT, "
                     f"per column {model['LUT']['per_col']:.0f} LUT "
                     f"{model['DSP']['per_col']:.1f} DSP; from {', '.join(fit['basis'])}"])
    return rows


def render_markdown(data: dict, plot_link: str | None = None) -> str:
    """The generated part of docs/fpga.md (and the hardware section of docs/results.md).

    ``plot_link``: the plot's address as seen from the Markdown file (default: the plot
    :data:`PLOT_PATH` seen from docs/fpga.md's folder).
    """
    if plot_link is None:
        plot_link = Path(os.path.relpath(PLOT_PATH, DOCS_PATH.parent)).as_posix()
    records = data["records"]
    built = sorted((FpgaResult.from_dict(r["result"]) for r in records.values()
                    if r.get("fits")), key=_sort_key)
    parts = ["Generated by `lowbit bench fpga` from bench/fpga.json"
             + (f" ({data['updated']})" if data.get("updated") else "") + ".", ""]
    compare = _comparison_table(records)
    if compare:
        parts += ["### Log-shift and XNOR against INT8 (same board, PE arrays in LUT logic)", "",
                  "LUTs are the unit's own (the wrapper's XOR tree taken off). *Marginal* is "
                  "the fitted per-PE slope (what one more PE costs, the cost of a large array) "
                  "divided by the MACs one PE does per cycle; *whole unit* divides all of the "
                  "unit's LUTs, per-column requantization and control included, by the MACs per "
                  "cycle of that array. INT8 / unit above 1: the unit is that many times "
                  "cheaper per MAC. An XNOR MAC is 1-bit; an INT8-equivalent MAC is "
                  f"{INT8_EQ_BINARY_MACS} of them (8 activation x 8 weight planes).", "",
                  compare, ""]
    costs = _cost_table(records)
    if costs:
        parts += ["### Cost per MAC of each unit", "",
                  "*LUT/MAC whole unit*: at each array built. *Per PE*: the slope of "
                  "`fixed + per_row*rows + per_col*cols + per_pe*rows*cols` fitted to the builds "
                  "(exact for four shapes). *LUT-eq per MAC*: per-PE LUTs plus per-PE DSP blocks counted "
                  "at their share of the device (LUTs / DSPs: iCE40UP5K 660, ECP5-85F 536), "
                  "per MAC at the unit's precision (XNOR with p x p planes: lanes / p^2 MACs "
                  "per PE per cycle). DSP mode requant: PE array in LUT logic; auto: INT8's "
                  "multipliers in DSP blocks.", "",
                  costs, "", f"![LUT-equivalents per MAC against bits]({plot_link})", ""]
    fmax = _fmax_table(records)
    if fmax:
        parts += ["### Clock: achieved Fmax against the target", "",
                  "nextpnr places and routes every build for the board's target "
                  "(`lowbit fpga --freq`) and reports the clock it achieves (one placer "
                  "seed). The largest array of the size sweep is the one the target is "
                  "meant for.", "", fmax, ""]
    bare = _bare_table(records)
    if bare:
        parts += ["### Against a bare registered PE (the same tools, the same run)", "",
                  "*Bare PE*: one processing element of the unit's kind alone "
                  "(`lowbit fpga --design bare`: registered inputs, registered product, a "
                  "24-bit accumulator; no output bank, drain or protocol), its unit LUTs in the "
                  "same wrapper. *Unit per PE*: the unit's fitted per-PE slope (its PE also "
                  "has the output-bank register and an accumulator as wide as the contract's "
                  "`max_k` needs). Unit / bare at 1: the unit's PE costs what the bare "
                  "arithmetic costs. Fmax: the unit's worst build against the bare PE's.", "",
                  bare, ""]
    checks = [[c["board"], c["precision"], c["dsp"], shape, f"{pred:.0f}", str(lut),
               f"{100 * (lut - pred) / pred:+.1f}%", ", ".join(c["basis"])]
              for c in cost_rows(records) for shape, pred, lut in c["checks"]]
    if checks:
        parts += ["### Model check: larger builds against the fitted model", "",
                  "Unit LUTs of builds that the model was not fitted to (the largest-array "
                  "builds) against the prediction `fixed + per_row*rows + per_col*cols + "
                  "per_pe*rows*cols`.", "",
                  _md_table(["board", "unit", "DSP mode", "array", "predicted LUT", "built LUT",
                             "error", "model fitted to"], checks), ""]
    largest = _largest_rows(records)
    if largest:
        parts += ["### Largest square array per board", "",
                  "Estimated from the linear model fitted to the builds (LUTs within "
                  f"{LUT_FILL:.0%} of the device), unless marked as verified by builds.", "",
                  _md_table(["board", "unit", "DSP", "largest", "MACs/cycle", "limited by",
                             "how"], largest), ""]
    parts += ["### All builds", "",
              "LUT = logic cells (ECP5 TRELLIS_COMB, iCE40 ICESTORM_LC) of the whole design and "
              "the device share; FF = flip-flops (iCE40: from the netlist); LUT/MAC = the "
              "unit's LUTs (the wrapper's XOR tree taken off) per MAC per cycle, XNOR MACs are "
              "1-bit; Fmax = nextpnr's achieved clock. DSP mode requant: PE array in LUT logic, "
              "requantization multipliers in DSPs; auto: every multiplier may use DSPs.", "",
              format_table(built), ""]
    for title, state in (("Builds that do not fit", False), ("Builds that failed", None)):
        bad = sorted((r for r in records.values() if r.get("fits") is state),
                     key=lambda r: r["key"])
        if bad:
            parts += [f"{title}:", ""] + [f"- `{r['key']}`: {r['error']}" for r in bad] + [""]
    return "\n".join(parts).rstrip() + "\n"


def plot_cost(data: dict, path: Path = PLOT_PATH) -> Path | None:
    """PNG of LUT-equivalents per MAC (log scale) against bits per weight, one panel per board.

    The cost is :func:`plot_points`' (marginal per-PE LUTs plus DSPs at their device share).
    Written atomically (a temporary file renamed over ``path``). Returns None without data.
    """
    points = plot_points(data["records"])
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    boards = [b for b in BOARDS if b in points]
    fig, axes = plt.subplots(1, len(boards), figsize=(5.2 * len(boards), 4), squeeze=False)
    style = {"INT8, multipliers in DSPs": dict(marker="s", linestyle="none", color="C3")}
    for ax, board in zip(axes[0], boards):
        for series, pts in points[board].items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    **style.get(series, dict(marker="o")), label=series)
            for x, y in pts:
                ax.annotate(f"{y:.0f}" if y >= 10 else f"{y:.1f}", (x, y),
                            textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(range(1, 9))
        ax.set_xlabel("bits per weight (XNOR: planes)")
        ax.set_ylabel("LUT-equivalents per MAC (marginal, per PE)")
        ax.set_title(f"{board} ({BOARDS[board].device})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Cost per MAC: LUTs + DSPs x (device LUTs / DSPs)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    try:
        fig.savefig(png, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(path, png.getvalue())
    return path


def update_docs(markdown: str, path: Path = DOCS_PATH) -> None:
    """Replace the generated section of docs/fpga.md (between the markers) with ``markdown``."""
    text = Path(path).read_text() if Path(path).exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n## Measured results\n\n", "\n"
    write_text_atomic(path, f"{head}{BEGIN}\n{markdown}{END}{tail}")


def hardware_table(results_path: Path = RESULTS_PATH, plot_link: str | None = None) -> str:
    """The hardware section for ``lowbit report`` (docs/results.md), from bench/fpga.json.

    Builds nothing: regenerate the numbers with ``lowbit bench fpga``. Returns Markdown
    starting with a ``## Hardware cost (FPGA)`` heading; the plot is linked as ``plot_link``
    (default: docs/img/fpga_cost_per_mac.png seen from docs/).
    """
    data = load_results(results_path)
    if not data["records"]:
        return "## Hardware cost (FPGA)\n\nNo FPGA results yet: run `lowbit bench fpga`.\n"
    text = render_markdown(data, plot_link)
    return ("## Hardware cost (FPGA)\n\nThe full tables, the method and the tool flow are in "
            "[fpga.md](fpga.md).\n\n" + text)


def report_section(docs_dir) -> str:
    """``hardware_table()`` with the plot linked relative to ``docs_dir`` (for lowbit report)."""
    link = os.path.relpath(PLOT_PATH, Path(docs_dir).resolve())
    return hardware_table(RESULTS_PATH, plot_link=Path(link).as_posix())


# ---------------------------------------------------------------------------------------------
# Largest array: verification builds


def verify_largest(data: dict, *, results_path: Path, build_root: str,
                   timeout: float | None, boards, jobs: int = 1,
                   ray_address: str | None = None) -> dict:
    """Confirm each estimated largest square array by building it and its neighbour.

    From the estimate ``n``: if ``n x n`` fits, build ``n+1`` (and upward while those fit);
    if it does not, step down until a size fits. Every build is recorded, so the table then
    shows the largest size that fits next to the smallest that does not. The units are
    verified ``jobs`` at a time (each unit's builds in order); the results file is rewritten
    after every build.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    records = data["records"]
    lock = threading.Lock()     # records and the file are shared by the worker threads

    def fits(row, n) -> bool:
        config = _config(row["board"], row["unit"], (n, n), base_params(row["unit"]),
                         row["dsp"])
        with lock:
            known = records.get(config.key, {}).get("fits")
        if known is None:
            print(f"verifying {config.key} ...", file=sys.stderr, flush=True)
            record = submit(config, build_root, timeout).result()
            with lock:
                records[config.key] = record
                _write_json_atomic(Path(results_path), data)
            state = {True: "fits", False: "does not fit", None: "failed"}[record["fits"]]
            print(f"  {config.key}: {state} ({record['seconds']:.0f} s)", file=sys.stderr,
                  flush=True)
            known = record["fits"]
        return bool(known)

    def verify(row) -> None:
        n = row["fit"]["n"]
        if fits(row, n):
            while n < 64 and fits(row, n + 1):
                n += 1
        else:
            while n > 1 and not fits(row, n - 1):
                n -= 1

    rows = [row for row in largest_table(records) if row["board"] in boards
            and row["fit"] is not None and row["fit"]["n"] is not None]
    with build_pool(jobs, ray_address, inline=True) as submit, \
            ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for future in [pool.submit(verify, row) for row in rows]:
            future.result()
    return data


# ---------------------------------------------------------------------------------------------
# CLI


def bench_fpga_arguments(p) -> None:
    """Add the flags of ``lowbit bench fpga`` to its parser (the command is listed in
    :data:`lowbit.commands.COMMANDS`)."""
    p.add_argument("--boards", nargs="+", default=list(BOARDS), metavar="BOARD",
                   help=f"boards to build for (default: {' '.join(BOARDS)})")
    p.add_argument("--quick", action="store_true",
                   help="the iCEBreaker builds only, no bit-width sweep and no verification "
                        "builds (about 15 CPU-minutes from scratch)")
    p.add_argument("--no-sweep", action="store_true", help="skip the bit-width sweep")
    p.add_argument("--verify-on", nargs="*", default=["icebreaker"], metavar="BOARD",
                   help="boards on which each estimated largest array is confirmed by building "
                        "it and the next size up (default: icebreaker; the ULX3S-85F's largest "
                        "arrays take tens of minutes per build; give no board to skip)")
    p.add_argument("--jobs", type=int, default=1, help="builds in parallel (default 1)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild configurations already in the results file")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds allowed per tool run (default 3600)")
    p.add_argument("--results", default=str(RESULTS_PATH), help="results JSON")
    p.add_argument("--docs", default=str(DOCS_PATH), help="Markdown file to update")
    p.add_argument("--plot", default=str(PLOT_PATH), help="PNG plot of cost per MAC")
    p.add_argument("--build-root", default="build/fpga-bench", help="build folders")
    p.add_argument("--render-only", action="store_true",
                   help="build nothing: re-render the docs from the results file")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="", default=None,
                   help="run the builds as Ray tasks: on the cluster at ADDRESS, or without one "
                        "on a local Ray instance with --jobs CPUs (docs/regress.md); this "
                        "process alone writes the results file")


def _lock(results: Path):
    """An exclusive lock next to ``results``: two runs would each rewrite the whole file and
    lose the other's records. Returns the open lock file (closing it releases the lock)."""
    import fcntl
    import hashlib
    # In the temporary folder (not next to the results, which are tracked by git), named after
    # the results file's absolute path.
    tag = hashlib.sha1(str(results.resolve()).encode()).hexdigest()[:16]
    f = open(Path(tempfile.gettempdir()) / f"lowbit-bench-fpga-{tag}.lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise LowbitError(f"another `lowbit bench fpga` is writing {results}; wait for it "
                          "to finish") from None
    return f


def run_bench_fpga(args) -> int:
    """``lowbit bench fpga``: build the configurations the results file lacks (all with
    ``--rebuild``, none with ``--render-only``), then print the tables and write them into the
    docs with the plot."""
    for board in list(args.boards) + list(args.verify_on):
        if board not in BOARDS:
            raise LowbitError(f"unknown board {board!r} (choose from {', '.join(BOARDS)})")
    if args.jobs < 1:
        raise LowbitError(f"--jobs must be a positive integer, not {args.jobs}")
    if not args.timeout > 0:
        raise LowbitError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    for flag in ("--results", "--docs", "--plot"):
        check_output_file(getattr(args, flag[2:]), flag, create_folders=True)
    check_build_dir(args.build_root, "--build-root")
    boards, verify_on = tuple(args.boards), tuple(args.verify_on)
    if args.quick:
        boards, verify_on = ("icebreaker",), ()
    results = Path(args.results)
    lock = None if args.render_only else _lock(results)
    if args.render_only:
        data = load_results(results)
        if not data["records"]:
            raise LowbitError(f"no FPGA results in {results}: run `lowbit bench fpga` first")
    else:
        configs = default_configs(boards, sweep=not (args.no_sweep or args.quick))
        data = run_bench(configs, results_path=results, build_root=args.build_root,
                         jobs=args.jobs, reuse=not args.rebuild, timeout=args.timeout,
                         ray_address=args.ray)
        while True:     # replace shapes a tool failed at (ALT_SIZES), as long as any are left
            more = fallback_configs(configs, data["records"])
            if not more:
                break
            print(f"{len(more)} build(s) failed in a tool; trying other shapes: "
                  + ", ".join(c.key for c in more), file=sys.stderr, flush=True)
            configs = configs + more
            data = run_bench(more, results_path=results, build_root=args.build_root,
                             jobs=args.jobs, reuse=True, timeout=args.timeout,
                             ray_address=args.ray)
        verify_on = tuple(b for b in verify_on if b in boards)
        if verify_on:
            data = verify_largest(data, results_path=results, build_root=args.build_root,
                                  timeout=args.timeout, boards=verify_on, jobs=args.jobs,
                                  ray_address=args.ray)
    if lock is not None:
        lock.close()
    markdown = render_markdown(
        data, Path(os.path.relpath(Path(args.plot).resolve(),
                                   Path(args.docs).resolve().parent)).as_posix())
    plot = plot_cost(data, Path(args.plot))
    update_docs(markdown, Path(args.docs))
    print(markdown)
    print(f"wrote {args.docs}" + (f", {plot}" if plot else "") + f" (results: {results})")
    return 0
