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
    # one write per call: the script runs its packs and trainings in parallel, and two writes
    # (arguments, then newline) from concurrent calls could interleave into one line
    fake.write_text('#!/usr/bin/env bash\nline=$(printf "%q " "$@"); printf "%s\\n" "$line" >> "$CALLS"\n')
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


SEQKD = ROOT / "scripts" / "seqkd_data.sh"


def _tiny_data(tmp_path, n=6):
    """A data directory with the first n training pairs of Multi30k and its real val split."""
    import gzip

    from lowbit.sw.data import read_parallel, resolve_data_dir

    real = resolve_data_dir()
    src, ref = read_parallel(real, "train", limit=n)
    data = tmp_path / "data"
    data.mkdir()
    for lang, lines in (("en", src), ("de", ref)):
        with gzip.open(data / f"train.{lang}.gz", "wt", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
    for lang in ("en", "de"):
        (data / f"val.{lang}.gz").symlink_to(real / f"val.{lang}.gz")
    return data, src, ref


def _seqkd(out, data, **env):
    full_env = dict(os.environ, DATA_DIR=str(data), BEAM="1", DEVICE="cpu", **env)
    return subprocess.run(["bash", str(SEQKD), str(out)], env=full_env, capture_output=True,
                          text=True, timeout=300)


def test_seqkd_data_replaces_training_targets_with_the_teachers_translations(tmp_path):
    """Sources unchanged, targets = the FP32 model's own (greedy here) translations, line for
    line; the other splits are links to the originals; the result reads as a data directory."""
    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.data import read_parallel
    from lowbit.sw.decode import DecodeOptions, translate

    data, src, ref = _tiny_data(tmp_path)
    out = tmp_path / "seqkd"
    proc = _seqkd(out, data)
    assert proc.returncode == 0, proc.stderr
    kd_src, kd_tgt = read_parallel(out, "train")
    model, tok, _ = load_model("multi30k-en-de")
    assert kd_src == src
    assert kd_tgt == translate(model, tok, src, DecodeOptions(beam=1))
    assert kd_tgt != ref  # the teacher does not reproduce the references word for word
    assert (out / "val.en.gz").resolve() == (data / "val.en.gz").resolve()
    assert read_parallel(out, "val", limit=3) == read_parallel(data, "val", limit=3)
    assert [p.name for p in tmp_path.iterdir() if ".tmp." in p.name] == []


def test_seqkd_data_limit_and_bad_input(tmp_path):
    from lowbit.sw.data import read_parallel

    data, src, _ = _tiny_data(tmp_path)
    out = tmp_path / "first2"
    assert _seqkd(out, data, LIMIT="2").returncode == 0
    assert read_parallel(out, "train")[0] == src[:2]
    proc = _seqkd(out, data)  # exists: refused, left as it was
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert read_parallel(out, "train")[0] == src[:2]
    proc = _seqkd(tmp_path / "x", data, LIMIT="two")
    assert proc.returncode == 2 and "LIMIT must be a positive whole number" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _seqkd(tmp_path / "y", empty)
    assert proc.returncode == 2 and "no train.en.gz or train.en" in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp." in p.name] == []
