"""Property-based fuzzing of the model loaders (hypothesis, fixed seed).

Copies of shipped models are corrupted in one random way each and loaded through
:func:`lowbit.sw.checkpoint.load_model`, the path every command takes. The property: loading
raises :class:`lowbit.LowbitError` with a one-line message naming the file at fault, or it
succeeds with the model the package held before the corruption -- never another exception.

"The model it held" means the same persistent tensors bit for bit, the same scheme and the
same tokenizer vocabulary; the config may differ only in the fields no stored tensor depends
on (``UNGUARDED``): a packed manifest carries no digest of itself, so an edit of, say,
``activation`` is indistinguishable from a package written that way. Where a file has no digest
either (the FP32 ``model.safetensors`` and ``spm.model``), a corruption of its data may load as
different weights or pieces; the tests allow exactly that and nothing more.

Corruptions: truncation, bit flips, XORed random bytes, appended bytes, an empty file, random
content, a missing file, a directory in its place, an extra file; JSON-level edits of the
manifest / config (deleted keys, values of other types, perturbed numbers, shapes, offsets, bit
widths, dtypes); blob and tokenizer corruptions behind a recomputed sha256, which only the
deeper checks can catch.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from lowbit import LowbitError
from lowbit.sw.checkpoint import load_model, shipped_models
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

PACKED = ("multi30k-en-de-int8", "multi30k-en-de-log4", "multi30k-en-de-mixed",
          "multi30k-en-de-bmt1")
FAST = ("multi30k-en-de-int8", "multi30k-en-de-log4")   # quickest to load in full
FP32 = "multi30k-en-de"
# Config fields no stored tensor depends on: an edit of them cannot be detected.
UNGUARDED = {"dropout", "attention_dropout", "activation_dropout", "activation",
             "scale_embedding", "max_position_embeddings", "pad_token_id", "eos_token_id",
             "unk_token_id", "decoder_start_token_id"}

# Fixed examples (derandomize), no example database, no shrinking (a failure prints its draws;
# shrinking a slow loader could take minutes).
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------------------------------------
# Packages, references, the property


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


class _Copy:
    """A fresh copy of a shipped model under ``root``, removed on exit."""

    def __init__(self, root: Path, name: str):
        self.src, self.dst = shipped_models()[name], root / name

    def __enter__(self) -> Path:
        if self.dst.exists():
            shutil.rmtree(self.dst)
        shutil.copytree(self.src, self.dst)
        return self.dst

    def __exit__(self, *exc):
        shutil.rmtree(self.dst, ignore_errors=True)


_REFERENCE: dict = {}


def reference(name: str) -> dict:
    """What the unmodified shipped model loads as (loaded once, on first need)."""
    if name not in _REFERENCE:
        _REFERENCE[name] = _load(shipped_models()[name])
    return _REFERENCE[name]


def _load(d) -> dict:
    """Everything a loaded model computes with: the state dict and every buffer (a packed model's
    integer tensors are non-persistent buffers). The position table is left out: it follows
    ``max_position_embeddings`` (compared with the config). A packed model leaves the float
    weights of its quantized layers at their initial values, so the seed is fixed."""
    torch.manual_seed(0)
    model, tok, meta = load_model(d)
    tensors = {**model.state_dict(), **dict(model.named_buffers())}
    tensors.pop("positions")
    return {"tensors": {k: v.detach().clone() for k, v in tensors.items()},
            "config": model.config.to_dict(), "scheme": meta.get("scheme"),
            "vocab": dict(tok.vocab)}


def check_load(d: Path, name: str, blame: tuple[str, ...], may_change: frozenset = frozenset()):
    """The property. ``blame``: file names of which the error message must name one;
    ``may_change``: what a successful load may legitimately change ({"weights", "tokenizer"}:
    a corruption of data that no digest covers)."""
    try:
        loaded = _load(d)
    except LowbitError as e:
        msg = str(e)
        assert "\n" not in msg, msg
        assert any(f in msg for f in blame), f"{msg!r} names none of {blame}"
        event("refused")
        return "error"
    ref = reference(name)
    assert loaded["scheme"] == ref["scheme"]
    if "tokenizer" not in may_change:
        assert loaded["vocab"] == ref["vocab"]
    differ = {k for k in ref["config"] if loaded["config"].get(k) != ref["config"][k]}
    assert differ <= UNGUARDED, f"config fields {sorted(differ - UNGUARDED)} changed silently"
    if "weights" not in may_change:
        assert loaded["tensors"].keys() == ref["tensors"].keys()
        for k, v in ref["tensors"].items():
            assert torch.equal(loaded["tensors"][k], v), f"{k} changed silently"
    event("loaded")
    return "loaded"


# ---------------------------------------------------------------------------------------------
# Corruptions


EDITS = ("truncate", "flip", "xor", "append", "empty", "random", "delete", "directory")


def draw_edit(data, size: int) -> tuple:
    """One byte-level edit of a file of ``size`` bytes; every edit changes the file."""
    kind = data.draw(st.sampled_from(EDITS if size else ("append", "random", "delete",
                                                         "directory")), label="edit")
    if kind == "truncate":
        return kind, data.draw(st.integers(0, size - 1), label="length")
    if kind == "flip":
        return kind, data.draw(st.integers(0, size - 1)), data.draw(st.integers(0, 7))
    if kind == "xor":
        pos = data.draw(st.integers(0, size - 1), label="pos")
        return kind, pos, data.draw(st.lists(st.integers(1, 255), min_size=1, max_size=16))
    if kind == "append":
        return kind, data.draw(st.binary(min_size=1, max_size=64))
    if kind == "random":
        return kind, data.draw(st.binary(min_size=1, max_size=512))
    return (kind,)


def apply_edit(path: Path, edit: tuple) -> None:
    kind = edit[0]
    if kind in ("delete", "directory"):
        path.unlink()
        if kind == "directory":
            path.mkdir()
            (path / "inside").write_bytes(b"x")
        return
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        data = data[:edit[1]]
    elif kind == "flip":
        data[edit[1]] ^= 1 << edit[2]
    elif kind == "xor":
        for i, b in enumerate(edit[2][:len(data) - edit[1]]):
            data[edit[1] + i] ^= b
    elif kind == "append":
        data += edit[1]
    elif kind == "empty":
        data = bytearray()
    elif kind == "random":
        data = bytearray(edit[1]) if bytes(edit[1]) != bytes(data) else data + b"\0"
    path.write_bytes(bytes(data))


def edit_span(edit: tuple, size: int) -> tuple[int, int]:
    """Byte range ``[lo, hi)`` of the original file an edit changed (hi = size: to the end)."""
    kind = edit[0]
    if kind == "flip":
        return edit[1], edit[1] + 1
    if kind == "xor":
        return edit[1], edit[1] + len(edit[2])
    if kind == "append":
        return size, size
    if kind == "truncate":
        return edit[1], size
    return 0, size


_SCALARS = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
            | st.sampled_from([0, -1, 1, 2 ** 31, 2 ** 63, 10 ** 30])
            | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
JUNK = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def perturbations(value):
    """Values near ``value`` of the same JSON type (the edits a checksum-less field must
    survive): off by one, doubled, negated, zero, huge; shapes with a dimension changed,
    added or removed."""
    if isinstance(value, bool):
        return st.just(not value)
    if isinstance(value, int):
        return st.sampled_from([value + 1, value - 1, 2 * value, -value, 0, 2 ** 40, 2 ** 64])
    if isinstance(value, float):
        return st.sampled_from([value * 2, -value, 0.0, 1.0, math.inf, math.nan])
    if isinstance(value, str):
        return st.sampled_from(["", value + "x", value[:-1], value.upper(), "f32", "int",
                                "uint", "sign"])
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return st.sampled_from([value + [1], value[:-1], value[::-1], [v + 1 for v in value],
                                [0] + value[1:], [2 ** 40] + value[1:]])
    return JUNK


def draw_json_edit(data, doc, focus: tuple = ()) -> str:
    """Edit ``doc`` in place at a random node (starting below ``focus``); returns a description."""
    parent, key, path = None, None, list(focus)
    node = doc
    for k in focus:
        parent, key, node = node, k, node[k]
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), label="deeper"):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        k = data.draw(st.sampled_from(keys), label="key")
        parent, key, node = node, k, node[k]
        path.append(k)
    op = data.draw(st.sampled_from(["delete", "junk", "perturb", "add"]) if parent is not None
                   else st.just("add"), label="op")
    if op == "delete":
        del parent[key]
    elif op == "junk":
        parent[key] = data.draw(JUNK, label="value")
    elif op == "perturb":
        parent[key] = data.draw(perturbations(node), label="value")
    else:
        target = node if isinstance(node, (dict, list)) else parent
        if isinstance(target, dict):
            target[data.draw(st.text(min_size=1, max_size=8), label="new key")] = data.draw(JUNK)
        else:
            target.append(data.draw(JUNK, label="new item"))
    return f"{op} at {path}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


# ---------------------------------------------------------------------------------------------
# Packed models


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_packed_file_corruptions(workdir, data):
    """Any byte-level corruption of manifest.json, weights.bin or spm.model is refused with the
    file named (the last two are covered by sha256 digests); a harmless one loads unchanged."""
    name = data.draw(st.sampled_from(PACKED), label="package")
    file = data.draw(st.sampled_from(("manifest.json", "weights.bin", "spm.model")), label="file")
    with _Copy(workdir, name) as d:
        edit = draw_edit(data, (d / file).stat().st_size)
        apply_edit(d / file, edit)
        check_load(d, name, (file,))


@settings(FUZZ, max_examples=4)
@given(data=st.data())
def test_packed_harmless_changes(workdir, data):
    """meta.json is description only and extra files are ignored: the model loads unchanged."""
    name = data.draw(st.sampled_from(FAST), label="package")
    with _Copy(workdir, name) as d:
        if data.draw(st.booleans(), label="meta.json"):
            edit = draw_edit(data, (d / "meta.json").stat().st_size)
            apply_edit(d / "meta.json", edit)
        else:
            extra = data.draw(st.sampled_from(["source.spm", "vocab.json", "config.json.bak",
                                               "notes.txt", "weights.bin.old"]), label="extra")
            (d / extra).write_bytes(data.draw(st.binary(max_size=64)))
        assert check_load(d, name, ()) == "loaded"


@settings(FUZZ, max_examples=60)
@given(data=st.data())
def test_packed_manifest_edits(workdir, data):
    """JSON-level edits of the manifest anywhere (half of them inside the tensor entries or the
    config): refused naming manifest.json, or loaded with unchanged weights."""
    name = data.draw(st.sampled_from(PACKED), label="package")
    with _Copy(workdir, name) as d:
        m = json.loads((d / "manifest.json").read_text())
        where = data.draw(st.sampled_from(["anywhere", "tensor", "config", "blob"]), label="where")
        if where == "tensor":
            focus = ("tensors", data.draw(st.sampled_from(sorted(m["tensors"])), label="tensor"))
        else:
            focus = () if where == "anywhere" else (where,)
        draw_json_edit(data, m, focus)
        (d / "manifest.json").write_text(json.dumps(m))
        check_load(d, name, ("manifest.json",))


@settings(FUZZ, max_examples=15)
@given(data=st.data())
def test_packed_blob_corruptions_behind_a_valid_digest(workdir, data):
    """A blob whose size and sha256 were recomputed after the corruption: only the tensor checks
    can object. Refused naming weights.bin or manifest.json, or loaded (then the weights may
    differ: a flipped bit of an integer code is still a valid model). Not the mixed package:
    most of these load in full, and it loads slowest (its plane counts behind a valid digest:
    tests/test_quant_packed.py)."""
    name = data.draw(st.sampled_from(("multi30k-en-de-int8", "multi30k-en-de-log4",
                                      "multi30k-en-de-bmt1")), label="package")
    with _Copy(workdir, name) as d:
        m = json.loads((d / "manifest.json").read_text())
        blob = bytearray((d / "weights.bin").read_bytes())
        kind = data.draw(st.sampled_from(["tensor", "truncate", "append"]), label="kind")
        if kind == "tensor":     # inside one tensor: a scale, a code, a plane count, alpha
            e = m["tensors"][data.draw(st.sampled_from(sorted(m["tensors"])), label="tensor")]
            pos = e["offset"] + data.draw(st.integers(0, e["nbytes"] - 1), label="pos")
            for i, b in enumerate(data.draw(st.lists(st.integers(1, 255), min_size=1,
                                                     max_size=4), label="xor")):
                if pos + i < e["offset"] + e["nbytes"]:
                    blob[pos + i] ^= b
        elif kind == "truncate":
            del blob[data.draw(st.integers(0, len(blob) - 1), label="length"):]
        else:
            blob += data.draw(st.binary(min_size=1, max_size=64), label="tail")
        (d / "weights.bin").write_bytes(bytes(blob))
        _edit_manifest(d, lambda m: m["blob"].update(bytes=len(blob), sha256=_sha256(blob)))
        check_load(d, name, ("weights.bin", "manifest.json"), frozenset({"weights"}))


@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_packed_tokenizer_corruptions_behind_a_valid_digest(workdir, data):
    """spm.model corrupted and its digest recomputed: SentencePiece's own parse errors (and a
    vocabulary larger than the model's) become LowbitError naming spm.model."""
    name = data.draw(st.sampled_from(FAST), label="package")
    with _Copy(workdir, name) as d:
        path = d / "spm.model"
        apply_edit(path, draw_edit(data, path.stat().st_size))
        if not path.is_file():
            return      # missing / directory: covered by test_packed_file_corruptions
        digest = _sha256(path.read_bytes())
        _edit_manifest(d, lambda m: m["tokenizer"].update({"spm.model": digest}))
        check_load(d, name, ("spm.model",), frozenset({"tokenizer"}))


def test_missing_manifest_is_named(workdir):
    """A package whose manifest.json is gone is not mistaken for an FP32 checkpoint only."""
    with _Copy(workdir, "multi30k-en-de-int8") as d:
        (d / "manifest.json").unlink()
        with pytest.raises(LowbitError, match="config.json is missing, and no manifest.json"):
            load_model(d)


def test_layout_and_size_limits_come_before_the_model_is_built(workdir):
    """Configs asking for more than the blob can hold are refused up front (no allocation):
    a huge layer count, a huge vocabulary, a d_model past what torch can describe."""
    cases = [({"encoder_layers": 10 ** 9}, "layers, but weights.bin holds only"),
             ({"vocab_size": 10 ** 12}, "elements, more than weights.bin"),
             ({"d_model": 2 ** 40, "attention_heads": 1}, "too large"),
             ({"max_position_embeddings": 10 ** 9}, "elements, more than weights.bin")]
    for edit, message in cases:
        with _Copy(workdir, "multi30k-en-de-int8") as d:
            _edit_manifest(d, lambda m: m["config"].update(edit))
            with pytest.raises(LowbitError, match=f"manifest.json: config: .*{message}"):
                load_model(d)


# ---------------------------------------------------------------------------------------------
# The FP32 checkpoint (config.json, model.safetensors, spm.model, meta.json)


def _safetensors_data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@settings(FUZZ, max_examples=30)
@given(data=st.data())
def test_checkpoint_file_corruptions(workdir, data):
    """Byte-level corruptions of a checkpoint's files. No digest covers them, so a corruption
    inside the safetensors tensor data (after its header) may load as other weights, one of
    spm.model as other pieces; everything else is refused naming the file or loads unchanged."""
    file = data.draw(st.sampled_from(("config.json", "model.safetensors", "spm.model",
                                      "meta.json")), label="file")
    with _Copy(workdir, FP32) as d:
        size = (d / file).stat().st_size
        edit = draw_edit(data, size)
        may_change = frozenset()
        if file == "model.safetensors":
            lo, _ = edit_span(edit, size)
            if edit[0] in ("flip", "xor") and lo >= _safetensors_data_start(d / file):
                may_change = frozenset({"weights"})
        elif file == "spm.model":
            may_change = frozenset({"tokenizer"})
        apply_edit(d / file, edit)
        check_load(d, FP32, (file,), may_change)


@settings(FUZZ, max_examples=25)
@given(data=st.data())
def test_checkpoint_config_edits(workdir, data):
    """JSON-level edits of config.json: refused naming config.json, or loaded unchanged."""
    with _Copy(workdir, FP32) as d:
        cfg = json.loads((d / "config.json").read_text())
        draw_json_edit(data, {"config": cfg}, ("config",))
        (d / "config.json").write_text(json.dumps(cfg))
        check_load(d, FP32, ("config.json",))


# ---------------------------------------------------------------------------------------------
# The command line: one `lowbit: error:` line, exit status 2, no traceback


CLI_CASES = {
    "truncated blob": ("multi30k-en-de-int8", lambda d: apply_edit(d / "weights.bin", ("truncate", 100))),
    "manifest of the wrong type": ("multi30k-en-de-mixed", lambda d: (d / "manifest.json").write_text("[1, 2]")),
    "shape edited": ("multi30k-en-de-bmt1", lambda d: _edit_manifest(
        d, lambda m: m["tensors"]["final_logits_bias"].update(shape=[1, 8001]))),
    "empty tokenizer": ("multi30k-en-de-log4", lambda d: (d / "spm.model").write_bytes(b"")),
    "config value of the wrong type": (FP32, lambda d: (d / "config.json").write_text(
        json.dumps(dict(json.loads((d / "config.json").read_text()), dropout="0.1")))),
    "safetensors header": (FP32, lambda d: apply_edit(d / "model.safetensors", ("xor", 20, [7]))),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_reports_corrupt_models(workdir, case, capsys, monkeypatch):
    from lowbit.cli import main

    name, corrupt = CLI_CASES[case]
    with _Copy(workdir, name) as d:
        corrupt(d)
        monkeypatch.setattr(sys, "stdin", io.StringIO("A dog runs.\n"))
        assert main(["translate", "--model", str(d)]) == 2
        err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowbit: error: "), err
    assert "Traceback" not in err


def test_cli_subprocess_exit_status(workdir):
    """The same through a real process: status 2, one line on stderr, nothing on stdout."""
    with _Copy(workdir, "multi30k-en-de-int8") as d:
        apply_edit(d / "manifest.json", ("flip", 40, 3))
        r = subprocess.run([sys.executable, "-m", "lowbit", "translate", "--model", str(d)],
                           input="A dog runs.\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("lowbit: error: "), r.stderr
    assert "manifest.json" in r.stderr
