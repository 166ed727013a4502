"""scripts/quantize_all.sh: what each SCHEMES entry trains and packs (a stand-in `lowbit` on
PATH records the commands the script runs; nothing is trained)."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "quantize_all.sh"


def _run(tmp_path, *stages, **env):
    """Run the script with a fake `lowbit` that appends its arguments to calls.txt."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "lowbit"
    fake.write_text('#!/usr/bin/env bash\nprintf "%q " "$@" >> "$CALLS"; echo >> "$CALLS"\n')
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    full_env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    CALLS=str(calls), RUNS=str(tmp_path / "runs"), **env)
    proc = subprocess.run(["bash", str(SCRIPT), *stages], env=full_env, capture_output=True,
                          text=True, timeout=60)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc, [shlex.split(line) for line in lines]


def _opt(args, name):
    return args[args.index(name) + 1] if name in args else None


def test_train_entries_map_to_qat_distillation_and_seeds(tmp_path):
    proc, calls = _run(tmp_path, "train", SCHEMES="log4 log4-kd-s2 fp32-control-s3 bmt1-s12",
                       KD_WEIGHT="0.25")
    assert proc.returncode == 0, proc.stderr
    by_out = {Path(_opt(c, "--out")).name: c for c in calls}
    assert sorted(by_out) == ["qat-bmt1-s12", "qat-fp32-control-s3", "qat-log4", "qat-log4-kd-s2"]
    plain, kd, control, bmt = (by_out[k] for k in ("qat-log4", "qat-log4-kd-s2",
                                                   "qat-fp32-control-s3", "qat-bmt1-s12"))
    assert _opt(plain, "--qat") == "log4" and "--distill" not in plain and "--seed" not in plain
    assert _opt(kd, "--qat") == "log4" and _opt(kd, "--distill") == "multi30k-en-de"
    assert _opt(kd, "--distill-weight") == "0.25" and _opt(kd, "--seed") == "2"
    assert "--qat" not in control and "--distill" not in control and _opt(control, "--seed") == "3"
    assert _opt(bmt, "--qat") == "bmt1" and _opt(bmt, "--seed") == "12"


def test_pack_uses_the_scheme_of_each_entry(tmp_path):
    proc, calls = _run(tmp_path, "pack", SCHEMES="log4-kd-s2 fp32-control mixed", PTQ="",
                       TAG="-x")
    assert proc.returncode == 0, proc.stderr
    packs = {Path(_opt(c, "-o")).name: _opt(c, "--scheme") for c in calls}
    assert packs == {"log4-kd-s2-x": "log4", "fp32-control-x": "fp32", "mixed-x": "mixed",
                     "fp32-ptq": "fp32"}


def test_unknown_stage_is_refused(tmp_path):
    proc, calls = _run(tmp_path, "trian", SCHEMES="log4")
    assert proc.returncode == 2 and "unknown stage trian" in proc.stderr and calls == []


@pytest.mark.parametrize("entry, recipe, scheme, seed", [
    ("log4", "log4", "log4", ""), ("log4-kd-s2", "log4-kd", "log4", "--seed 2"),
    ("fp32-control", "fp32-control", "fp32", ""), ("mixed-s10", "mixed", "mixed", "--seed 10")])
def test_entry_parsing_functions(entry, recipe, scheme, seed):
    out = subprocess.run(["bash", "-c", f'source "{SCRIPT}"; recipe_of {entry}; scheme_of {entry}; '
                          f'echo "[$(seed_args {entry})]"'], capture_output=True, text=True,
                         timeout=30).stdout.split("\n")
    assert out[:3] == [recipe, scheme, f"[{seed}]"]
