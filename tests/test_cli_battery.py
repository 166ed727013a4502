"""Bad input of every kind, for every command: one ``lowbit: error:`` line, exit status 2, no
traceback, and every file that existed before is byte-identical after.

The invocations run in-process (an uncaught exception fails the test with its traceback), a few
of them also as real processes. Every case must fail during validation, before any long work,
which keeps the battery fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.sw.checkpoint import shipped_models

DATA = os.environ.get("LOWBIT_DATA_DIR") or str(
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace of existing files the battery must leave untouched."""
    root = tmp_path_factory.mktemp("battery")
    models = shipped_models()
    shutil.copytree(models["multi30k-en-de-int8"], root / "pkg")
    shutil.copytree(models["multi30k-en-de"], root / "fp32")
    (root / "existing.txt").write_text("keep me\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("unrelated file\n")
    (root / "emptydir").mkdir()
    (root / "results.json").write_text('{"not": "a list"}\n')
    (root / "garbage.bin").write_bytes(bytes(range(256)) * 4)
    # damaged copies of the shipped models
    shutil.copytree(models["multi30k-en-de-int8"], root / "pkg-truncated")
    blob = root / "pkg-truncated" / "weights.bin"
    blob.write_bytes(blob.read_bytes()[:1000])
    shutil.copytree(models["multi30k-en-de-int8"], root / "pkg-badmanifest")
    (root / "pkg-badmanifest" / "manifest.json").write_text("{ this is not json")
    shutil.copytree(models["multi30k-en-de"], root / "fp32-badconfig")
    (root / "fp32-badconfig" / "config.json").write_text('{"d_model": "wide"}')
    shutil.copytree(models["multi30k-en-de"], root / "fp32-nospm")
    (root / "fp32-nospm" / "spm.model").unlink()
    shutil.copytree(models["multi30k-en-de"], root / "fp32-badweights")
    (root / "fp32-badweights" / "model.safetensors").write_bytes(b"\x00" * 64)
    return root


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest()
                                        if p.is_file() else "dir")
            for p in sorted(root.rglob("*"))}


W = "{ws}"          # replaced by the workspace path
D = f"--data-dir={DATA}"

# (argv, stdin bytes or None, a fragment of the expected error line)
CASES = [
    # -- the dispatcher ------------------------------------------------------------------------
    ([], None, "required"),
    (["no-such-command"], None, "invalid choice"),
    (["translate", "--no-such-option"], None, "unrecognized arguments"),
    (["bench"], None, "required"),
    (["bench", "nothing"], None, "invalid choice"),
    # -- translate -----------------------------------------------------------------------------
    (["translate", "--beam", "0"], None, "expected a positive integer, not '0'"),
    (["translate", "--beam", "-3"], None, "expected a positive integer"),
    (["translate", "--beam", "1e9x"], None, "expected a positive integer"),
    (["translate", "--length-penalty", "nan"], None, "expected a finite number, not 'nan'"),
    (["translate", "--length-penalty=-inf"], None, "expected a finite number, not '-inf'"),
    (["translate", "--length-penalty", "inf"], None, "expected a finite number, not 'inf'"),
    (["translate", "--max-len-a", "nan"], None, "not 'nan'"),
    (["translate", "--max-len-a", "-1"], None, "non-negative"),
    (["translate", "--max-len-b", "-5"], None, "non-negative integer"),
    (["translate", "--batch-size", "0"], None, "positive integer"),
    (["translate", "--threads", "0"], None, "positive integer"),
    (["translate", "--max-input-tokens", "-1"], None, "positive integer"),
    (["translate", "--device", "tpu"], b"A dog.\n", "--device must be cpu, cuda"),
    (["translate", "--model", "no-such-model"], b"A dog.\n", "neither a shipped model"),
    (["translate", "--model", f"{W}/existing.txt"], b"A dog.\n", "not a file"),
    (["translate", "--model", f"{W}/emptydir"], b"A dog.\n", "emptydir"),
    (["translate", "--model", f"{W}/notes"], b"A dog.\n", "notes"),
    (["translate", "--model", f"{W}/pkg-truncated"], b"A dog.\n", "weights.bin"),
    (["translate", "--model", f"{W}/pkg-badmanifest"], b"A dog.\n", "manifest.json"),
    (["translate", "--model", f"{W}/fp32-badconfig"], b"A dog.\n", "config"),
    (["translate", "--model", f"{W}/fp32-nospm"], b"A dog.\n", "tokenizer"),
    (["translate", "--model", f"{W}/fp32-badweights"], b"A dog.\n", "model.safetensors"),
    # -- eval ----------------------------------------------------------------------------------
    (["eval", D, "--split", "test_2099"], None, "split 'test_2099' (en) not found"),
    (["eval", "--data-dir", "/nonexistent/dir"], None, "does not exist"),
    (["eval", "--data-dir", f"{W}/existing.txt"], None, "does not exist"),
    (["eval", D, "--limit", "0"], None, "positive integer"),
    (["eval", D, "--limit", "-10"], None, "positive integer"),
    (["eval", D, "--beam", "nan"], None, "positive integer"),
    (["eval", D, "--output", "/proc/out.txt"], None, "cannot write --output /proc/out.txt"),
    (["eval", D, "--output", f"{W}/notes"], None, "it is a directory"),
    (["eval", D, "--output", f"{W}/existing.txt/x"], None, "is not a directory"),
    (["eval", D, "--output", f"{W}/missing/x.txt"], None, "does not exist"),
    (["eval", D, "--json", "/proc/r.json"], None, "cannot write --json"),
    (["eval", D, "--json", f"{W}/emptydir"], None, "it is a directory"),
    (["eval", D, "--json", f"{W}/results.json"], None, "results"),
    (["eval", D, "--json", f"{W}/garbage.bin"], None, "garbage.bin"),
    (["eval", D, "--model", f"{W}/pkg", "--output", f"{W}/pkg/weights.bin"], None,
     "would overwrite the input"),
    (["eval", D, "--length-penalty", "nan"], None, "not 'nan'"),
    # -- models, demo --------------------------------------------------------------------------
    (["models", "--all"], None, "unrecognized arguments"),
    (["demo", "--limit", "0"], None, "positive integer"),
    (["demo", "--beam", "x"], None, "positive integer"),
    (["demo", "--threads", "-1"], None, "positive integer"),
    (["demo", "--model", "no-such-model"], None, "neither a shipped model"),
    # -- train ---------------------------------------------------------------------------------
    (["train", D, "--out", f"{W}/run", "--config", "enormous"], None, "neither a preset"),
    (["train", D, "--out", f"{W}/run", "--config", "{not json"], None, "not valid JSON"),
    (["train", D, "--out", f"{W}/run", "--epochs", "0"], None, "positive integer"),
    (["train", D, "--out", f"{W}/run", "--lr", "nan"], None, "not 'nan'"),
    (["train", D, "--out", f"{W}/run", "--lr", "0"], None, "positive finite"),
    (["train", D, "--out", f"{W}/run", "--label-smoothing", "1.5"], None, "label-smoothing"),
    (["train", D, "--out", f"{W}/run", "--max-minutes", "inf"], None, "not 'inf'"),
    (["train", D, "--out", f"{W}/run", "--distill-weight", "2"], None, "distill-weight"),
    (["train", D, "--out", f"{W}/run", "--seed", "-1"], None, "non-negative"),
    (["train", D, "--out", f"{W}/notes"], None, "not empty"),
    (["train", D, "--out", f"{W}/existing.txt"], None, "not a directory"),
    (["train", D, "--out", "/proc/run"], None, "cannot write --out /proc/run"),
    (["train", D, "--out", f"{W}/notes", "--resume"], None, "cannot resume"),
    (["train", D, "--out", f"{W}/fp32", "--init", f"{W}/fp32"], None, "would overwrite the input"),
    (["train", D, "--out", f"{W}/run", "--qat", "int8"], None, "--qat needs --init"),
    (["train", D, "--out", f"{W}/run", "--qat", "int99", "--init", f"{W}/fp32"], None, "int99"),
    (["train", D, "--out", f"{W}/run", "--qat", "bmt1", "--init", f"{W}/fp32",
      "--qat-word-planes", "2,3"], None, "--qat-word-planes: Word planes must not increase"),
    (["train", D, "--out", f"{W}/run", "--qat", "int8", "--init", f"{W}/fp32",
      "--qat-word-planes", "2,1"], None, "word planes apply to mixed and the BMT schemes"),
    (["train", D, "--out", f"{W}/run", "--qat", "mixed", "--init", f"{W}/fp32",
      "--qat-word-planes", "4,x"], None, "comma-separated positive integers"),
    # -- import-hf / export-hf -----------------------------------------------------------------
    (["import-hf", "/nonexistent/marian", "-o", f"{W}/hf-in"], None, "is not a directory"),
    (["import-hf", f"{W}/notes", "-o", f"{W}/hf-in"], None, "notes"),
    (["import-hf", f"{W}/fp32", "-o", f"{W}/notes"], None, "not empty"),
    (["export-hf", "--model", f"{W}/fp32", "-o", f"{W}/notes"], None, "not empty"),
    (["export-hf", "--model", f"{W}/fp32", "-o", f"{W}/existing.txt"], None, "not a directory"),
    (["export-hf", "--model", f"{W}/fp32", "-o", f"{W}/fp32"], None, "would overwrite the input"),
    (["export-hf", "--model", f"{W}/fp32", "-o", "/proc/hf"], None, "cannot write"),
    (["export-ct2", "--model", f"{W}/fp32", "-o", f"{W}/notes"], None, "not empty"),
    (["export-ct2", "--model", f"{W}/fp32", "-o", f"{W}/fp32"], None, "would overwrite the input"),
    (["export-ct2", "--model", f"{W}/fp32", "-o", "/proc/ct2"], None, "cannot write"),
    (["export-ct2", "--model", f"{W}/fp32", "-o", f"{W}/ct2", "--quantization", "int3"], None,
     "int3"),
    (["export-ct2", "--model", "no-such-model", "-o", f"{W}/ct2"], None, "neither a shipped"),
    # -- data fetch ----------------------------------------------------------------------------
    (["data", "fetch", "wmt14"], None, "invalid choice"),
    (["data", "fetch", "multi30k", "--splits", "test_2099"], None, "test_2099"),
    (["data", "fetch", "multi30k", "--dest", f"{W}/existing.txt"], None, "not a directory"),
    (["data", "fetch", "multi30k", "--dest", "/proc/m30k"], None, "cannot"),
    (["data", "fetch", "multi30k", "--dest", f"{W}/m30k", "--base-url", "gopher://x/"], None,
     "base-url"),
    (["data", "fetch", "multi30k", "--dest", f"{W}/m30k", "--timeout", "nan"], None, "nan"),
    # -- regress -------------------------------------------------------------------------------
    (["regress", f"{W}/missing.toml"], None, "does not exist"),
    (["regress", f"{W}/garbage.bin"], None, "cannot read config"),
    (["regress", f"{W}/existing.txt"], None, "cannot read config"),
    (["regress", f"{W}/results.json", "--cpus", "0"], None, "--cpus"),
    # -- quantize ------------------------------------------------------------------------------
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/notes"], None,
     "not empty"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/notes", "--force"],
     None, "not a lowbit packed model"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/pkg"], None,
     "--force"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/fp32"], None,
     "would overwrite the input"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/fp32", "--force"], None,
     "would overwrite the input"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/fp32/sub"], None,
     "would overwrite the input"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/existing.txt"], None,
     "not a directory"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", "/proc/q"], None,
     "cannot write"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int42", "-o", f"{W}/q"], None, "int42"),
    (["quantize", "--model", f"{W}/pkg", "--scheme", "int8", "-o", f"{W}/q"], None,
     "already a packed model"),
    (["quantize", "--model", f"{W}/fp32", "--scheme", "int8", "-o", f"{W}/q",
      "--calibrate-batches", "0"], None, "positive integer"),
    # -- report, check-devices -----------------------------------------------------------------
    (["report", "--results", f"{W}/results.json", "--docs", f"{W}/emptydir"], None, "results"),
    (["report", "--beam", "0"], None, "positive integer"),
    (["check-devices", "--model", "multi30k-en-de-int8", D, "--limit", "0"], None,
     "positive integer"),
    (["check-devices", "--model", "multi30k-en-de-int8", D, "--jobs", "-2"], None,
     "positive integer"),
    # -- hw verilog ----------------------------------------------------------------------------
    (["hw", "verilog", "--unit", "int9", "-o", f"{W}/u.v"], None, "unknown unit"),
    (["hw", "verilog", "--unit", "int8", "--rows", "0", "-o", f"{W}/u.v"], None, "--rows"),
    (["hw", "verilog", "--unit", "int8", "--rows", "100000", "-o", f"{W}/u.v"], None, "--rows"),
    (["hw", "verilog", "--unit", "int8", "--cols", "-4", "-o", f"{W}/u.v"], None, "--cols"),
    (["hw", "verilog", "--unit", "int8", "--out-bits", "99", "-o", f"{W}/u.v"], None, "--out-bits"),
    (["hw", "verilog", "--unit", "int8", "--max-k", "0", "-o", f"{W}/u.v"], None, "--max-k"),
    (["hw", "verilog", "--unit", "int8", "--lanes", "8", "-o", f"{W}/u.v"], None, "--lanes"),
    (["hw", "verilog", "--unit", "xnor", "--lanes", "100000", "-o", f"{W}/u.v"], None, "--lanes"),
    (["hw", "verilog", "--unit", "log", "--bits", "0", "-o", f"{W}/u.v"], None, "--bits"),
    (["hw", "verilog", "--unit", "int8", "--name", "1bad", "-o", f"{W}/u.v"], None, "--name"),
    (["hw", "verilog", "--unit", "int8", "-o", "/proc/u.v"], None, "cannot write -o /proc/u.v"),
    (["hw", "verilog", "--unit", "int8", "-o", f"{W}/notes"], None, "it is a directory"),
    (["hw", "verilog", "--unit", "int8", "-o", f"{W}/missing/u.v"], None, "does not exist"),
    (["hw", "verilog", "--unit", "int8", "--rows", "nan", "-o", f"{W}/u.v"], None, "invalid int"),
    # -- fpga ----------------------------------------------------------------------------------
    (["fpga", "--board", "de10", "--unit", "int8"], None, "board"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "--dsp", "maybe"], None, "--dsp"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "--timeout", "nan"], None, "--timeout"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "--rows", "0"], None, "--rows"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "-o", f"{W}/existing.txt"], None,
     "not a directory"),
    (["fpga", "--board", "icebreaker", "--unit", "int8", "-o", "/proc/fpga"], None, "cannot write"),
    # -- verify --------------------------------------------------------------------------------
    (["verify", "--unit", "int8", "--m", "100000000", "--k", "8", "--n", "100000000"], None,
     "at most 16,777,216"),
    (["verify", "--unit", "int8", "--m", "0", "--k", "8", "--n", "4"], None, "--m"),
    (["verify", "--unit", "int8", "--m", "4", "--k", "-8", "--n", "4"], None, "--k"),
    (["verify", "--unit", "int8", "--m", "4", "--k", "8", "--n", "4", "--seed", "-1"], None,
     "--seed"),
    (["verify", "--unit", "int8", "--m", "4", "--k", "8", "--n", "4", "--backpressure", "nan"],
     None, "--backpressure"),
    (["verify", "--unit", "int8", "--m", "4", "--k", "8", "--n", "4", "--relu", "--raw"], None,
     "exclude each other"),
    (["verify", "--unit", "xnor", "--m", "4", "--k", "8", "--n", "4", "--bits", "99"], None,
     "--bits must be an integer in 1..8 for xnor"),
    (["verify", "--unit", "bogus", "--m", "4", "--k", "8", "--n", "4"], None, "unknown unit"),
    # -- cosim ---------------------------------------------------------------------------------
    (["cosim", "--model", "multi30k-en-de", D, "--limit", "1"], None, "not a packed model"),
    (["cosim", "--model", f"{W}/pkg", D, "--limit", "0"], None, "--limit"),
    (["cosim", "--model", f"{W}/pkg", D, "--jobs", "0"], None, "--jobs"),
    (["cosim", "--model", f"{W}/pkg", D, "--rows", "1000"], None, "--rows"),
    (["cosim", "--model", f"{W}/pkg", D, "--output", "/proc/c.txt"], None, "cannot write"),
    (["cosim", "--model", f"{W}/pkg", D, "--json", f"{W}/notes"], None, "it is a directory"),
    (["cosim", "--model", f"{W}/pkg", D, "--output", f"{W}/pkg/manifest.json"], None,
     "would overwrite the input"),
    (["cosim", "--model", f"{W}/pkg", D, "--rtl-fault", "nope"], None, "--rtl-fault"),
    # -- bench ---------------------------------------------------------------------------------
    (["bench", "decode", D, "--beams", "1,x"], None, "--beams must be comma-separated"),
    (["bench", "decode", D, "--beams", "0"], None, "positive"),
    (["bench", "decode", D, "--threads", "0"], None, "positive"),
    (["bench", "decode", D, "--sentences", "0"], None, "positive integer"),
    (["bench", "units", "--skip", "modelsim"], None, "--skip"),
    (["bench", "units", "--m", "0"], None, "--m"),
    (["bench", "units", "--json", "/proc/u.json"], None, "cannot write"),
    (["bench", "units", "--m", "10000000", "--n", "10000000"], None, "at most 16,777,216"),
    (["bench", "units", "--seed", "-5"], None, "--seed"),
    (["bench", "cosim", "--model", f"{W}/pkg", D, "--sentences", "0"], None, "--sentences"),
    (["bench", "cosim", "--model", f"{W}/pkg", D, "--json", "/proc/x"], None, "cannot write"),
    (["bench", "fpga", "--boards", "de10"], None, "unknown board"),
    (["bench", "fpga", "--jobs", "0"], None, "--jobs"),
    (["bench", "fpga", "--results", f"{W}/notes"], None, "it is a directory"),
]


def _run(argv, stdin, monkeypatch, capsys):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        status = main(argv)
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def test_the_battery_is_large():
    commands = {" ".join(a[:2]) if a[:1] in (["hw"], ["bench"]) else (a[0] if a else "")
                for a, _, _ in CASES}
    assert len(CASES) >= 80
    for command in ("translate", "eval", "models", "demo", "train", "import-hf", "export-hf",
                    "export-ct2", "data", "regress", "quantize", "report", "check-devices", "hw verilog", "fpga", "verify",
                    "cosim", "bench decode", "bench units", "bench cosim", "bench fpga"):
        assert command in commands, command


@pytest.mark.parametrize("argv,stdin,message", CASES,
                         ids=[" ".join(a)[:60] or "(none)" for a, _, _ in CASES])
def test_bad_invocation(ws, argv, stdin, message, monkeypatch, capsys):
    monkeypatch.chdir(ws)
    before = _snapshot(ws)
    argv = [a.replace(W, str(ws)) for a in argv]
    status, _, err = _run(argv, stdin, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert status == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), err
    assert message in lines[0], lines[0]
    assert _snapshot(ws) == before


# Input that is odd but translatable: a warning, translations, exit 0.
@pytest.mark.parametrize("stdin,warning", [
    (b"A man \xe9 is here.\nA dog runs.\n", "input line 1 is not valid UTF-8"),
    (b"\x00\xff\xfe binary \x80\x81\n", "input line 1 is not valid UTF-8"),
    ((" ".join(["word"] * 5000) + "\n").encode(), "truncated to 256"),
])
def test_odd_input_is_translated_with_a_warning(stdin, warning, monkeypatch, capsys):
    status, out, err = _run(["translate", "--beam", "1", "--device", "cpu"], stdin, monkeypatch,
                            capsys)
    assert status in (0, None), err
    assert "Traceback" not in err and warning in err
    assert len(out.splitlines()) == stdin.count(b"\n")


def test_quantize_onto_unrelated_directory_keeps_its_file(ws, capsys):
    status, _, err = _run(["quantize", "--model", str(ws / "fp32"), "--scheme", "int8", "-o",
                           str(ws / "notes"), "--force"], None, None, capsys)
    assert status == 2 and (ws / "notes" / "todo.txt").read_text() == "unrelated file\n"


@pytest.mark.parametrize("argv,stdin", [
    (["translate", "--beam", "1", "--device", "cpu"], b"caf\xe9 \x00\xff\n"),
    (["eval", "--output", "/proc/x.txt"], None),
    (["verify", "--unit", "int8", "--m", "100000000", "--k", "8", "--n", "100000000"], None),
])
def test_real_process_has_no_traceback(argv, stdin, tmp_path):
    env = dict(os.environ, LOWBIT_DATA_DIR=DATA)
    proc = subprocess.run([sys.executable, "-m", "lowbit", *argv], input=stdin or b"",
                          capture_output=True, env=env, cwd=tmp_path, timeout=300)
    assert b"Traceback" not in proc.stderr
    assert proc.returncode in (0, 2)
    assert list(tmp_path.iterdir()) == []
