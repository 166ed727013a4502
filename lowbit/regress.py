"""``lowbit regress CONFIG.toml``: a regression matrix (packages x splits x checks) on Ray.

Every cell of the matrix is an independent Ray task: the golden BLEU of a package on a split,
its CPU/GPU token identity, or its co-simulation through the Verilated units. Ray places the
tasks on whatever cluster it is given (``--ray ADDRESS``; none: a local instance) and retries a
task whose worker died. The driver is the only writer of the results: after every finished cell
it rewrites the JSON file and the Markdown table atomically, so an interrupted run loses nothing
and a re-run skips the cells that are done (a cell's key holds the options it was run with).

Each worker node keeps its own cache of Verilated builds (``lowbit.toolenv.cache_dir()``, keyed by
the unit's Verilog and the tool versions), so a unit is built once per node, not once per task.

Config (TOML)::

    [regress]
    packages = ["multi30k-en-de-int8", "multi30k-en-de-log4"]   # shipped names or directories
    splits = ["test_2016_flickr", "test_2017_flickr"]
    checks = ["bleu", "cosim"]          # bleu, devices, cosim
    limit = 100                         # sentences per split (omit: the whole split)
    beam = 5                            # beam of the bleu check (cosim and devices: greedy)
    data_dir = "/data/multi30k"         # omit: --data-dir, $LOWBIT_DATA_DIR, the user data dir
    output = "regress.json"             # and regress.md beside it; relative to the config
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lowbit import LowbitError
from lowbit.io import check_output_file, write_text_atomic
from lowbit.ray_session import ray_session

CHECKS = ("bleu", "devices", "cosim")


@dataclass
class RegressConfig:
    packages: list[str]
    splits: list[str]
    checks: list[str]
    limit: int | None = None
    beam: int = 5
    data_dir: str | None = None
    output: Path = field(default_factory=lambda: Path("regress.json"))

    def cells(self) -> list[dict]:
        return [{"package": p, "split": s, "check": c, "limit": self.limit,
                 "beam": self.beam if c == "bleu" else 1}
                for p in self.packages for s in self.splits for c in self.checks]


def cell_key(cell: dict) -> str:
    return (f"{cell['package']}|{cell['split']}|{cell['check']}|limit={cell['limit']}|"
            f"beam={cell['beam']}")


def load_config(path, data_dir: str | None = None) -> RegressConfig:
    """Read and validate ``CONFIG.toml`` (every error names the key)."""
    import tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LowbitError(f"config {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise LowbitError(f"cannot read config {path}: {e}") from None
    sec = raw.get("regress")
    if not isinstance(sec, dict):
        raise LowbitError(f"config {path} needs a [regress] table")
    unknown = set(sec) - {"packages", "splits", "checks", "limit", "beam", "data_dir", "output"}
    if unknown:
        raise LowbitError(f"config {path}: unknown key(s) {', '.join(sorted(unknown))}")

    def names(key, default=None):
        value = sec.get(key, default)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, str) and v for v in value)):
            raise LowbitError(f"config {path}: {key} must be a non-empty list of strings")
        return value

    checks = names("checks", list(CHECKS))
    bad = [c for c in checks if c not in CHECKS]
    if bad:
        raise LowbitError(f"config {path}: unknown check(s) {', '.join(bad)} (choose from "
                          f"{', '.join(CHECKS)})")
    limit, beam = sec.get("limit"), sec.get("beam", 5)
    for key, value, lo in (("limit", limit, 1), ("beam", beam, 1)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < lo):
            raise LowbitError(f"config {path}: {key} must be a positive integer, not {value!r}")
    output = sec.get("output", "regress.json")
    if not isinstance(output, str) or not output.endswith(".json"):
        raise LowbitError(f"config {path}: output must be a .json file name, not {output!r}")
    d = data_dir or sec.get("data_dir")
    if d is not None and not isinstance(d, str):
        raise LowbitError(f"config {path}: data_dir must be a string")
    if d is not None and not os.path.isabs(d) and data_dir is None:
        d = str(path.parent / d)
    return RegressConfig(packages=names("packages"), splits=names("splits", ["test_2016_flickr"]),
                         checks=checks, limit=limit, beam=beam, data_dir=d,
                         output=(path.parent / output))


# ---------------------------------------------------------------------------------------------
# The cells (run on a Ray worker)


def run_cell(cell: dict, data_dir: str, crash_marker: str | None = None) -> dict:
    """Run one cell and return its result (a JSON-able dict with ``status``)."""
    if crash_marker is not None and not os.path.exists(crash_marker):
        # test hook: the first attempt of this cell dies like a lost node
        Path(crash_marker).write_text(str(os.getpid()))
        os._exit(1)
    import torch

    torch.set_num_threads(1)
    from lowbit.sw.data import read_parallel

    src, ref = read_parallel(Path(data_dir), cell["split"], limit=cell["limit"])
    t0 = time.perf_counter()
    check = cell["check"]
    if check == "bleu":
        from lowbit.sw.checkpoint import load_model
        from lowbit.sw.decode import DecodeOptions, corpus_bleu, translate

        model, tokenizer, _ = load_model(cell["package"], "cpu")
        hyps = translate(model, tokenizer, src, DecodeOptions(beam=cell["beam"]), device="cpu")
        score, signature = corpus_bleu(hyps, ref)
        out = {"status": "pass", "bleu": round(score.score, 2), "signature": str(signature)}
    elif check == "devices":
        if not torch.cuda.is_available():
            return {"status": "skipped", "why": "no CUDA device on the worker",
                    "sentences": len(src), "seconds": 0.0}
        from lowbit.sw.quant.consistency import compare_devices

        same, total, _ = compare_devices(cell["package"], src, 1, 1)
        out = {"status": "pass" if same == total else "fail", "identical": same}
    else:
        from lowbit.sim.cosim import CosimOptions, cosim_split
        from lowbit.sw.checkpoint import resolve_model_dir

        report = cosim_split(str(resolve_model_dir(cell["package"])), src, CosimOptions(jobs=1),
                             log=lambda m: None, warn=lambda m: None)
        out = {"status": "pass" if report.ok else "fail", "identical": report.identical,
               "cycles": report.cycles, "mismatch": report.mismatch}
    out.update(sentences=len(src), seconds=round(time.perf_counter() - t0, 1),
               node=os.uname().nodename)
    return out


# ---------------------------------------------------------------------------------------------
# The driver


def read_state(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LowbitError(f"cannot read results {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise LowbitError(f"{path} is not a lowbit regress results file")
    return data["cells"]


def markdown(cfg: RegressConfig, cells: dict) -> str:
    """One table: a row per package and split, a column per check."""
    head = "| package | split | " + " | ".join(cfg.checks) + " |"
    lines = [head, "|" + " --- |" * (2 + len(cfg.checks))]
    for p in cfg.packages:
        for s in cfg.splits:
            row = []
            for c in cfg.checks:
                cell = next((x for x in cfg.cells() if x["package"] == p and x["split"] == s
                             and x["check"] == c), None)
                r = cells.get(cell_key(cell)) if cell else None
                if r is None:
                    row.append("--")
                elif r["status"] == "skipped":
                    row.append(f"skipped ({r['why']})")
                elif c == "bleu":
                    row.append(f"{r['bleu']:.2f}")
                else:
                    row.append(f"{r['status']} {r['identical']}/{r['sentences']}")
            lines.append(f"| {p} | {s} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def _save(cfg: RegressConfig, cells: dict) -> None:
    write_text_atomic(cfg.output, json.dumps({"cells": cells}, indent=1, sort_keys=True) + "\n")
    write_text_atomic(cfg.output.with_suffix(".md"), markdown(cfg, cells))


def regress(cfg: RegressConfig, address: str | None = None, cpus: int | None = None,
            progress=None, crash_once: str | None = None) -> dict:
    """Run every cell of ``cfg`` not done yet on Ray; returns ``{key: result}``."""
    import ray

    from lowbit.sw.data import resolve_data_dir

    data_dir = str(resolve_data_dir(cfg.data_dir).resolve())
    cells = read_state(cfg.output)
    todo = [c for c in cfg.cells() if cells.get(cell_key(c), {}).get("status")
            not in ("pass", "fail", "skipped")]
    if not todo:
        return cells
    with ray_session(address, cpus):
        task = ray.remote(max_retries=3, num_cpus=1)(run_cell)
        pending = {}
        for c in todo:
            marker = crash_once if crash_once and cell_key(c) == cell_key(todo[0]) else None
            pending[task.remote(c, data_dir, marker)] = c
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                c = pending.pop(ref)
                try:
                    cells[cell_key(c)] = ray.get(ref)
                except ray.exceptions.RayError as e:   # the cell failed for good
                    cells[cell_key(c)] = {"status": "error",
                                          "why": str(e).strip().splitlines()[-1][:300]}
                _save(cfg, cells)
                if progress:
                    progress(c, cells[cell_key(c)])
    return cells


def regress_arguments(p) -> None:
    p.add_argument("config", help="TOML file with a [regress] table (docs/regress.md)")
    p.add_argument("--ray", metavar="ADDRESS", nargs="?", const="", default="",
                   help="Ray cluster address (ray://HOST:10001 or HOST:6379); none: start a "
                        "local instance")
    p.add_argument("--cpus", type=int, default=None,
                   help="CPUs of a local Ray instance (default: all)")
    p.add_argument("--data-dir", help="Multi30k directory (overrides the config's)")
    # Test hook (docs/regress.md): the first attempt of the first cell kills its worker.
    p.add_argument("--crash-once", metavar="MARKER", help=argparse.SUPPRESS)


def run_regress(args) -> int:
    if args.cpus is not None and args.cpus < 1:
        raise LowbitError(f"--cpus must be a positive integer, not {args.cpus}")
    cfg = load_config(args.config, args.data_dir)
    check_output_file(cfg.output, "output")
    check_output_file(cfg.output.with_suffix(".md"), "output")
    read_state(cfg.output)      # a foreign file fails now
    from lowbit.sw.data import resolve_data_dir

    resolve_data_dir(cfg.data_dir)
    total = len(cfg.cells())

    def show(cell, result):
        print(f"{cell['package']} {cell['split']} {cell['check']}: {result['status']}"
              + (f" ({result.get('why')})" if result.get("why") else ""), flush=True)

    before = read_state(cfg.output)
    done_before = sum(1 for c in cfg.cells() if before.get(cell_key(c), {}).get("status")
                      in ("pass", "fail", "skipped"))
    if done_before:
        print(f"{done_before}/{total} cells already done in {cfg.output}: skipped", flush=True)
    cells = regress(cfg, address=args.ray or None, cpus=args.cpus, progress=show,
                    crash_once=args.crash_once)
    sys.stdout.write(markdown(cfg, cells))
    statuses = [cells.get(cell_key(c), {}).get("status") for c in cfg.cells()]
    print(f"wrote {cfg.output} and {cfg.output.with_suffix('.md')}: "
          f"{statuses.count('pass')} passed, {statuses.count('fail')} failed, "
          f"{statuses.count('skipped')} skipped, {statuses.count('error')} errors of {total}")
    return 0 if all(s in ("pass", "skipped") for s in statuses) else 1
