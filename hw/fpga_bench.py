"""``lowbit bench fpga``: the hardware cost table of the three matmul units.

Builds every unit at several array sizes on each board (:mod:`lowbit.hw.fpga`), a sweep over
bit widths, and estimates the largest array of each unit that fits each board. Results are kept
in ``bench/fpga.json`` (one record per build, written after each build so an interrupted run
resumes with ``--reuse``); the tables go between the markers of docs/fpga.md and the plot of
cost per MAC against bits to docs/fpga_cost.png. :func:`hardware_table` renders the same tables
from ``bench/fpga.json`` for ``lowbit report`` without building anything.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from lowbit import LowbitError

from .fpga import BOARDS, FpgaDoesNotFit, FpgaResult, format_table, table_row

__all__ = ["Config", "default_configs", "run_bench", "fit_largest", "hardware_table",
           "render_markdown", "plot_cost", "update_docs", "register_bench"]

REPO = Path(__file__).resolve().parents[1]
RESULTS_PATH = REPO / "bench" / "fpga.json"
DOCS_PATH = REPO / "docs" / "fpga.md"
PLOT_PATH = REPO / "docs" / "fpga_cost.png"
BEGIN, END = "<!-- fpga-table:begin (lowbit bench fpga) -->", "<!-- fpga-table:end -->"

UNITS = ("int8", "log", "xnor")
# Default precision of each unit in the size sweep: INT8, the paper's 4-bit log codes, BMT's
# 1-bit weights and activations with 32 lanes of K per beat.
BASE_PARAMS = {"int8": {}, "log": {"bits": 4}, "xnor": {"lanes": 32}}
SIZES = {"ulx3s-85f": (2, 4, 8), "icebreaker": (1, 2, 4)}
SWEEP_BOARD, SWEEP_SIZE = "ulx3s-85f", 4
# (bits, params) per unit for the cost-per-MAC plot: INT a = w = b bits; log b-bit weight
# codes (int8 activations); XNOR p activation and p weight planes.
# Parameters equal to the base precision are left out, so the sweep point at the base
# precision is the very build of the size sweep (one key, one build).
SWEEP = {
    "int8": [(b, {"a_bits": b, "w_bits": b} if b != 8 else {}) for b in (2, 4, 6, 8)],
    "log": [(b, {"bits": b}) for b in (1, 2, 3, 4, 5)],
    "xnor": [(p, {"a_planes": p, "w_planes": p, "lanes": 32} if p != 1 else {"lanes": 32})
             for p in (1, 2, 4)],
}


@dataclasses.dataclass(frozen=True)
class Config:
    """One build: board, unit, square array size, unit parameters and DSP mode."""
    board: str
    unit: str
    size: int
    params: tuple = ()          # sorted (name, value) pairs, hashable
    dsp: str = "off"

    @property
    def key(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.params)
        return f"{self.board}|{self.unit}|{self.size}x{self.size}|{extra}|dsp={self.dsp}"

    def unit_params(self) -> dict:
        return {"rows": self.size, "cols": self.size, **dict(self.params)}


def _config(board, unit, size, params, dsp="off") -> Config:
    return Config(board, unit, size, tuple(sorted(params.items())), dsp)


def default_configs(boards=tuple(BOARDS), sweep: bool = True) -> list[Config]:
    """Every build of the table.

    LUT-only builds (``dsp=off``) compare the units on equal terms: the fabric. INT8 is also
    built with DSP multipliers on the ULX3S, the way a designer would use that board.
    """
    configs = []
    for board in boards:
        for unit in UNITS:
            configs += [_config(board, unit, n, BASE_PARAMS[unit]) for n in SIZES[board]]
        if board == "ulx3s-85f":
            configs += [_config(board, "int8", n, {}, "auto") for n in SIZES[board]]
    if sweep and SWEEP_BOARD in boards:
        for unit, points in SWEEP.items():
            for _bits, params in points:
                c = _config(SWEEP_BOARD, unit, SWEEP_SIZE, params)
                if c not in configs:
                    configs.append(c)
    return configs


def _build_one(config: Config, build_root: str, timeout: float | None) -> dict:
    """Build one config (in a worker process); a record for bench/fpga.json."""
    from .fpga import build_unit
    build_dir = os.path.join(build_root, config.key.replace("|", "_").replace(",", "_")
                             .replace("=", ""))
    start = time.monotonic()
    record = {"key": config.key, "config": dataclasses.asdict(config)}
    try:
        result = build_unit(config.board, config.unit, config.unit_params(),
                            build_dir=build_dir, dsp=config.dsp, progress=lambda line: None,
                            timeout=timeout)
        record.update(fits=True, result=result.to_dict())
    except FpgaDoesNotFit as e:
        record.update(fits=False, error=str(e),
                      overflow={k: list(v) for k, v in e.overflow.items()})
    except LowbitError as e:
        record.update(fits=None, error=str(e))
    record["seconds"] = round(time.monotonic() - start, 1)
    return record


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def load_results(path: Path = RESULTS_PATH) -> dict:
    """``{"records": {key: record}}`` from ``path`` (empty if it does not exist)."""
    if not Path(path).exists():
        return {"records": {}}
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "records" not in data:
        raise LowbitError(f"{path} is not an FPGA results file (no 'records')")
    return data


def run_bench(configs: list[Config], *, results_path: Path = RESULTS_PATH,
              build_root: str = "build/fpga-bench", jobs: int = 1, reuse: bool = True,
              timeout: float | None = None) -> dict:
    """Build ``configs`` (``jobs`` at a time), saving each record as it finishes.

    With ``reuse``, configs already in ``results_path`` (built successfully or found not to
    fit) are not rebuilt. Returns the results dict.
    """
    from tqdm import tqdm

    data = load_results(results_path)
    records = data["records"]
    todo = [c for c in configs if not (reuse and c.key in records
                                       and records[c.key].get("fits") is not None)]
    bar = tqdm(total=len(todo), desc="fpga builds", unit="build", file=sys.stderr)
    if todo:
        with ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=get_context("spawn")) \
                as pool:
            futures = {pool.submit(_build_one, c, build_root, timeout): c for c in todo}
            from concurrent.futures import as_completed
            for future in as_completed(futures):
                record = future.result()
                records[record["key"]] = record
                data["updated"] = time.strftime("%Y-%m-%d")
                _write_json_atomic(Path(results_path), data)
                state = {True: "ok", False: "does not fit", None: "failed"}[record["fits"]]
                bar.set_postfix_str(f"{record['key']}: {state} ({record['seconds']:.0f} s)")
                bar.write(f"{record['key']}: {state} in {record['seconds']:.0f} s"
                          + (f" ({record['error']})" if record.get("error") else ""),
                          file=sys.stderr)
                bar.update(1)
    bar.close()
    return data


# ---------------------------------------------------------------------------------------------
# Analysis


def _results(records: dict, **match) -> list[FpgaResult]:
    out = []
    for record in records.values():
        cfg = record["config"]
        if record.get("fits") and all(cfg.get(k) == v for k, v in match.items()):
            out.append(FpgaResult.from_dict(record["result"]))
    return sorted(out, key=lambda r: (r.params["rows"], r.lut))


def _base(records, board, unit, dsp="off") -> list[FpgaResult]:
    """The size sweep of one unit at its default precision."""
    params = tuple(sorted(BASE_PARAMS[unit].items()))
    return [r for r in _results(records, board=board, unit=unit, dsp=dsp)
            if all(r.params.get(k) == v for k, v in params)
            and _config(board, unit, r.params["rows"], BASE_PARAMS[unit], dsp).key in records]


def _quadratic(points: list[tuple[int, float]]):
    """Least-squares ``y = a + b n + c n^2`` through ``points`` (exact for three)."""
    import numpy as np
    n = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    degree = min(2, len(points) - 1)
    coeffs = np.polyfit(n, y, degree)[::-1]
    return [float(c) for c in coeffs] + [0.0] * (2 - degree)


def fit_largest(results: list[FpgaResult], not_fit: list[int] = ()) -> dict | None:
    """Estimate the largest square array that fits, from builds of the same unit.

    Every resource (LUT, FF, DSP, BRAM) is fitted as ``a + b n + c n^2`` over the built
    ``n x n`` arrays (``c`` is the cost of one PE, ``b`` of one column's drain and
    requantization, ``a`` the fixed control); the largest ``n`` whose every prediction stays
    within the device (LUTs within 90 %: nextpnr needs slack to route) is the estimate, capped
    below any size that was built and did not fit, and at 64 (the units' largest array).

    Returns ``{"n": ..., "limit": resource, "per_pe": {...}, "basis": [...sizes]}`` or None
    with fewer than two fitting sizes.
    """
    if len(results) < 2:
        return None
    sizes = [r.params["rows"] for r in results]
    first = results[0]
    limits = {"LUT": (0.9 * first.lut_available, "lut"), "FF": (first.ff_available, "ff"),
              "DSP": (first.dsp_available, "dsp"), "BRAM": (first.bram_available, "bram")}
    fits, per_pe = {}, {}
    for name, (cap, field) in limits.items():
        a, b, c = _quadratic([(r.params["rows"], getattr(r, field)) for r in results])
        per_pe[name] = round(c, 2)
        n = 0
        while n < 64 and a + b * (n + 1) + c * (n + 1) ** 2 <= cap:
            n += 1
        fits[name] = n
    limit = min(fits, key=lambda k: fits[k])
    n = fits[limit]
    if not_fit:
        n = min(n, min(not_fit) - 1)
    if n < max(sizes):  # a built size fits by measurement whatever the model says
        n = max(sizes)
    return {"n": n, "limit": limit if n < 64 else "array size (64)", "per_pe": per_pe,
            "basis": sizes}


def largest_table(records: dict) -> list[dict]:
    """One row per (board, unit, DSP mode): the largest array that fits and why."""
    rows = []
    for board in BOARDS:
        for unit in UNITS:
            for dsp in ("off", "auto"):
                built = _base(records, board, unit, dsp)
                failed = [r["config"]["size"] for r in records.values()
                          if r.get("fits") is False and r["config"]["board"] == board
                          and r["config"]["unit"] == unit and r["config"]["dsp"] == dsp
                          and tuple(map(tuple, r["config"]["params"]))
                          == tuple(sorted(BASE_PARAMS[unit].items()))]
                if not built and not failed:
                    continue
                fit = fit_largest(built, failed)
                verified = [r for r in records.values() if r.get("purpose") == "largest"
                            and r["config"]["board"] == board and r["config"]["unit"] == unit
                            and r["config"]["dsp"] == dsp]
                rows.append({"board": board, "unit": unit, "dsp": dsp, "fit": fit,
                             "built": [r.params["rows"] for r in built], "failed": failed,
                             "verified": {r["config"]["size"]: r.get("fits")
                                          for r in verified},
                             "macs_per_pe": (built[0].macs_per_cycle
                                             // (built[0].params["rows"] ** 2)) if built else 1})
    return rows


def sweep_points(records: dict) -> dict:
    """``{unit: [(bits, LUTs per b-bit MAC, result)]}`` from the bit-width sweep.

    A b-bit MAC is one multiply-accumulate at the unit's precision: INT ``rows*cols`` per
    cycle; log ``rows*cols`` (b-bit weight x int8 activation); XNOR with ``p`` activation and
    ``p`` weight planes needs ``p*p`` beats for one p-bit product, so
    ``rows*cols*lanes / p^2`` per cycle.
    """
    out = {}
    for unit, points in SWEEP.items():
        for bits, params in points:
            key = _config(SWEEP_BOARD, unit, SWEEP_SIZE, params).key
            record = records.get(key)
            if not record or not record.get("fits"):
                continue
            r = FpgaResult.from_dict(record["result"])
            planes = r.params.get("a_planes", 1) * r.params.get("w_planes", 1)
            out.setdefault(unit, []).append((bits, r.unit_lut * planes / r.macs_per_cycle, r))
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


def _ratio_rows(records: dict) -> list[list[str]]:
    """Rows comparing log and XNOR with INT8 on the same board, all LUT-only builds.

    Two measures: the whole unit's LUTs per MAC at each array size built for all units (the
    per-column drain and requantization included), and the array's own cost per MAC, the
    fitted per-PE slope (``c`` of :func:`fit_largest`) divided by the MACs of one PE.
    """
    rows = []
    for board in BOARDS:
        base = {u: _base(records, board, u) for u in UNITS}
        for n in SIZES[board]:
            at = {u: [r for r in base[u] if r.params["rows"] == n] for u in UNITS}
            if not at["int8"]:
                continue
            ref = at["int8"][0].lut_per_mac
            for unit in ("log", "xnor"):
                if at[unit]:
                    r = at[unit][0]
                    what = "1-bit MAC" if unit == "xnor" else "MAC"
                    rows.append([board, f"{n}x{n} whole unit", unit, f"{ref:.1f}",
                                 f"{r.lut_per_mac:.2f} per {what}",
                                 f"{ref / r.lut_per_mac:.1f}x"])
        fits = {u: fit_largest(base[u]) for u in UNITS}
        if fits["int8"] is None:
            continue
        ref = fits["int8"]["per_pe"]["LUT"]
        for unit in ("log", "xnor"):
            if fits[unit] is None:
                continue
            macs = base[unit][0].macs_per_cycle // base[unit][0].params["rows"] ** 2
            per_mac = fits[unit]["per_pe"]["LUT"] / macs
            what = "1-bit MAC" if unit == "xnor" else "MAC"
            rows.append([board, f"per PE, fitted to {fits[unit]['basis']}", unit, f"{ref:.1f}",
                         f"{per_mac:.2f} per {what}", f"{ref / per_mac:.1f}x"])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return format_table(rows, columns=header, row=lambda r: r)


def render_markdown(data: dict) -> str:
    """The generated part of docs/fpga.md (and the hardware section of docs/results.md)."""
    records = data["records"]
    built = [FpgaResult.from_dict(r["result"]) for r in records.values() if r.get("fits")]
    built.sort(key=lambda r: (list(BOARDS).index(r.board), UNITS.index(r.unit), r.dsp_mode,
                              json.dumps({k: v for k, v in r.params.items()
                                          if k not in ("rows", "cols")}, sort_keys=True),
                              r.params["rows"]))
    parts = [f"Generated by `lowbit bench fpga` from bench/fpga.json"
             + (f" ({data['updated']})" if data.get("updated") else "") + ".", ""]
    parts += ["### All builds", "",
              "LUT = logic cells (ECP5 TRELLIS_COMB, iCE40 ICESTORM_LC) of the whole design with "
              "the device share; FF = flip-flops (iCE40: from the netlist); LUT/MAC = the unit's "
              "LUTs (the wrapper's XOR tree taken off) per MAC per cycle; XNOR MACs are 1-bit. "
              "Fmax is nextpnr's achieved clock.", "",
              format_table(built), ""]
    not_fit = [r for r in records.values() if r.get("fits") is False]
    if not_fit:
        parts += ["Builds that do not fit:", ""]
        parts += [f"- {r['key']}: {r['error']}" for r in sorted(not_fit, key=lambda r: r["key"])]
        parts += [""]
    ratios = _ratio_rows(records)
    if ratios:
        parts += ["### Cost per MAC against INT8 (same board, same array, LUT logic only)", "",
                  _md_table(["board", "measure", "unit", "INT8 LUT/MAC", "unit LUT/MAC",
                             "INT8 / unit"], ratios), ""]
    largest = largest_table(records)
    if largest:
        rows = []
        for row in largest:
            fit = row["fit"]
            if fit is None:
                rows.append([row["board"], row["unit"], row["dsp"], "-", "-", "-",
                             f"built {row['built']}, no fit at {row['failed']}"])
                continue
            n = fit["n"]
            state = {True: "verified by a build", False: "estimate (build failed)",
                     None: "estimate"}[row["verified"].get(n)]
            pe = fit["per_pe"]
            rows.append([row["board"], row["unit"], row["dsp"], f"{n}x{n}",
                         str(n * n * row["macs_per_pe"]), fit["limit"],
                         f"{state}; per PE {pe['LUT']:.0f} LUT, {pe['FF']:.0f} FF, "
                         f"{pe['DSP']:.2f} DSP; fitted to {fit['basis']}"
                         + (f", no fit at {row['failed']}" if row["failed"] else "")])
        parts += ["### Largest square array per board", "",
                  _md_table(["board", "unit", "DSP", "largest", "MACs/cycle", "limited by",
                             "how"], rows), ""]
    points = sweep_points(records)
    if points:
        rows = [[u, str(b), f"{c:.1f}", f"{r.unit_lut}", f"{r.fmax_mhz:.1f}"]
                for u, pts in points.items() for b, c, r in pts]
        parts += [f"### Cost per MAC against bits ({SWEEP_BOARD}, {SWEEP_SIZE}x{SWEEP_SIZE}, "
                  "LUT logic only)", "",
                  "INT: a = w = bits; log: bits of the weight code, int8 activations; XNOR: "
                  "bits = activation planes = weight planes (a p-bit MAC takes p*p plane "
                  "pairs).", "",
                  _md_table(["unit", "bits", "LUT per MAC", "unit LUT", "Fmax MHz"], rows), "",
                  f"![LUT per MAC against bits]({PLOT_PATH.name})", ""]
    return "\n".join(parts).rstrip() + "\n"


def plot_cost(data: dict, path: Path = PLOT_PATH) -> Path | None:
    """PNG of LUTs per MAC (log scale) against bits, one line per unit."""
    points = sweep_points(data["records"])
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"int8": "INT (a = w bits)", "log": "log-shift (weight code bits, int8 act.)",
              "xnor": "XNOR-popcount (planes)"}
    for unit, pts in points.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=labels[unit])
    ax.set_yscale("log")
    ax.set_xlabel("bits")
    ax.set_ylabel("LUTs per MAC")
    ax.set_title(f"{SWEEP_BOARD}, {SWEEP_SIZE}x{SWEEP_SIZE} array, LUT logic only")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def update_docs(markdown: str, path: Path = DOCS_PATH) -> None:
    """Replace the generated section of docs/fpga.md (between the markers) with ``markdown``."""
    text = Path(path).read_text() if Path(path).exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n## Measured results\n\n", "\n"
    new = f"{head}{BEGIN}\n{markdown}{END}{tail}"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=Path(path).parent)
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.replace(tmp, path)


def hardware_table(results_path: Path = RESULTS_PATH) -> str:
    """The hardware section for ``lowbit report`` (docs/results.md), from bench/fpga.json.

    Builds nothing: regenerate the numbers with ``lowbit bench fpga``. Returns Markdown
    starting with a ``## Hardware cost (FPGA)`` heading.
    """
    data = load_results(results_path)
    if not data["records"]:
        return ("## Hardware cost (FPGA)\n\nNo FPGA results yet: run `lowbit bench fpga`.\n")
    body = render_markdown(data).replace("### ", "### ").replace(
        f"]({PLOT_PATH.name})", f"]({PLOT_PATH.name})")
    return "## Hardware cost (FPGA)\n\n" + body


# ---------------------------------------------------------------------------------------------
# Largest array: verification builds


def verify_largest(data: dict, *, results_path: Path, build_root: str, jobs: int,
                   timeout: float | None, boards) -> dict:
    """Build each estimated largest array (and, if it fits, one size larger) to confirm it.

    Steps down from the estimate while the build does not fit; every build is recorded with
    ``purpose = "largest"``.
    """
    records = data["records"]
    for row in largest_table(records):
        if row["board"] not in boards or row["fit"] is None:
            continue
        n = row["fit"]["n"]
        base = BASE_PARAMS[row["unit"]]
        while n >= 1:
            config = _config(row["board"], row["unit"], n, base, row["dsp"])
            if config.key not in records or records[config.key].get("fits") is None:
                print(f"verifying {config.key} ...", file=sys.stderr, flush=True)
                record = _build_one(config, build_root, timeout)
                record["purpose"] = "largest"
                records[config.key] = record
                _write_json_atomic(Path(results_path), data)
            else:
                records[config.key].setdefault("purpose", "largest")
            if records[config.key].get("fits"):
                break
            n -= 1
    return data


# ---------------------------------------------------------------------------------------------
# CLI


def register_bench(subparsers) -> None:
    p = subparsers.add_parser(
        "fpga", help="FPGA cost table of the matmul units (docs/fpga.md)",
        description="Build every matmul unit at several sizes on each board, write "
                    "bench/fpga.json, the tables of docs/fpga.md and docs/fpga_cost.png.")
    p.add_argument("--boards", nargs="+", default=list(BOARDS), metavar="BOARD",
                   help=f"boards to build for (default: {' '.join(BOARDS)})")
    p.add_argument("--no-sweep", action="store_true", help="skip the bit-width sweep")
    p.add_argument("--jobs", type=int, default=1, help="builds in parallel (default 1)")
    p.add_argument("--rebuild", action="store_true",
                   help="rebuild configurations already in the results file")
    p.add_argument("--verify-largest", action="store_true",
                   help="also build each estimated largest array to confirm that it fits "
                        "(slow on the ULX3S-85F: large arrays take tens of minutes)")
    p.add_argument("--timeout", type=float, default=3600,
                   help="seconds allowed per tool run (default 3600)")
    p.add_argument("--results", default=str(RESULTS_PATH), help="results JSON")
    p.add_argument("--docs", default=str(DOCS_PATH), help="Markdown file to update")
    p.add_argument("--plot", default=str(PLOT_PATH), help="PNG plot of cost per MAC")
    p.add_argument("--build-root", default="build/fpga-bench", help="build folders")
    p.add_argument("--render-only", action="store_true",
                   help="build nothing: re-render the docs from the results file")
    p.set_defaults(func=_bench_command)


def _bench_command(args) -> int:
    for board in args.boards:
        if board not in BOARDS:
            raise LowbitError(f"unknown board {board!r} (choose from {', '.join(BOARDS)})")
    if args.jobs < 1:
        raise LowbitError(f"--jobs must be a positive integer, not {args.jobs}")
    results = Path(args.results)
    if args.render_only:
        data = load_results(results)
    else:
        configs = default_configs(tuple(args.boards), sweep=not args.no_sweep)
        data = run_bench(configs, results_path=results, build_root=args.build_root,
                         jobs=args.jobs, reuse=not args.rebuild, timeout=args.timeout)
        if args.verify_largest:
            data = verify_largest(data, results_path=results, build_root=args.build_root,
                                  jobs=args.jobs, timeout=args.timeout, boards=args.boards)
    markdown = render_markdown(data)
    plot = plot_cost(data, Path(args.plot))
    update_docs(markdown, Path(args.docs))
    print(markdown)
    print(f"wrote {args.docs}" + (f", {plot}" if plot else "") + f" (results: {results})")
    return 0
