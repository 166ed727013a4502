"""Packed models: pack -> load gives identical integer weights and identical integer decoding;
every kind of malformed package raises LowbitError naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.quant import qat
from lowbit.sw.quant.modules import QuantLinear
from lowbit.sw.quant.packed import (BLOB, MANIFEST, _sha256, decode, encode, load_packed,
                                    package_size, write_packed)
from lowbit.sw.quant.weights import RowGroups
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece

SCHEMES = ("int8", "int6", "log4", "log1", "bmt1", "bmt1a1", "mixed", "fp32")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from lowbit.sw.data import read_parallel, resolve_data_dir

    en, de = read_parallel(resolve_data_dir(), "val")
    path = tmp_path_factory.mktemp("tok") / "spm.model"
    train_sentencepiece(en[:400] + de[:400], path, vocab_size=300)
    return Tokenizer(path)


def tiny_model(scheme: str, tokenizer, seed: int = 0):
    """A random tiny Transformer prepared for ``scheme``, ranges calibrated on random batches."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                            attention_heads=2, ffn_dim=64, dropout=0.0, attention_dropout=0.0)
    model = qat.prepare_model(Transformer(cfg), scheme)
    if qat.needs_word_counts(qat.scheme_of(model)):     # mixed, bmt*: per-word planes
        qat.assign_word_planes(model, torch.arange(len(tokenizer), 0, -1).double())
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(3, len(tokenizer), (4, 9), generator=g),
                torch.randint(3, len(tokenizer), (4, 6), generator=g)) for _ in range(3)]
    qat.calibrate(model, batches)
    return model.eval()


@pytest.fixture(scope="module")
def packed(tokenizer, tmp_path_factory):
    """scheme -> (prepared model, packed directory)."""
    root = tmp_path_factory.mktemp("packed")
    out = {}
    for s in SCHEMES:
        model = tiny_model(s, tokenizer)
        out[s] = (model, write_packed(model, tokenizer, root / s))
    return out


def _integer_tensors(qw):
    if isinstance(qw, RowGroups):
        return [t for rows, part in qw.groups for t in (rows, part.signs, part.alpha, part.scale)]
    return [getattr(qw, f) for f in ("values", "codes", "signs", "alpha", "scale")
            if hasattr(qw, f)] + ([torch.tensor(qw.log_scale)] if hasattr(qw, "log_scale") else [])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip_identical_weights_and_decoding(scheme, packed, tokenizer):
    model, directory = packed[scheme]
    loaded, tok, meta = load_packed(directory)
    assert meta["scheme"] == scheme and meta["size_bytes"] == package_size(directory)
    for name, m in qat.quant_modules(model):
        if isinstance(m, QuantLinear):
            want = _integer_tensors(m.quantized_weight())
            got = _integer_tensors(loaded.get_submodule(name).qweight)
            assert len(want) == len(got)
            for a, b in zip(want, got):
                assert torch.equal(a.cpu(), b.cpu()), name
    # the loaded package decodes exactly like the in-memory model switched to integer mode
    from lowbit.sw.decode import pad_batch

    src = pad_batch([tokenizer.encode("A man rides a bike."), tokenizer.encode("Two dogs.")], 0)
    tgt = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    reference = qat.to_integer(model)(src, tgt) if scheme != "fp32" else model(src, tgt)
    assert torch.equal(loaded(src, tgt), reference)
    assert (directory / "spm.model").is_file() and tok.encode("a") == tokenizer.encode("a")


def test_bit_widths_on_disk(packed):
    """Codes are stored at their real width: the blob holds exactly the bits the manifest claims."""
    for scheme, bits in (("int8", 8), ("int6", 6), ("log4", 4), ("log1", 1)):
        manifest = json.loads((packed[scheme][1] / MANIFEST).read_text())
        e = manifest["tensors"]["model.encoder.layers.0.fc1.weight"]
        assert e["bits"] == bits and e["shape"] == [64, 32] and e["nbytes"] == 64 * 32 * bits // 8
    manifest = json.loads((packed["bmt1"][1] / MANIFEST).read_text())
    e = manifest["tensors"]["model.encoder.layers.0.fc1.weight"]
    assert e["dtype"] == "sign" and e["nbytes"] == 64 * 4          # one 32-bit word per row
    manifest = json.loads((packed["mixed"][1] / MANIFEST).read_text())
    e = manifest["tensors"]["model.encoder.layers.0.fc1.weight"]
    assert e["dtype"] == "sign" and e["shape"] == [4, 64, 32]      # encoder FFN: 4 planes
    assert manifest["tensors"]["lm_head.row_planes"]["bits"] == 4


@pytest.mark.parametrize("dtype,bits", [("int", 2), ("int", 5), ("int", 8), ("uint", 1), ("uint", 3),
                                        ("uint", 16)])
def test_encodings_round_trip(dtype, bits):
    g = torch.Generator().manual_seed(bits)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype == "int" else (0, (1 << bits) - 1)
    t = torch.randint(lo, hi + 1, (7, 13), generator=g)
    t[0, 0], t[0, 1] = lo, hi
    data = encode(t, dtype, bits)
    assert len(data) == (t.numel() * bits + 7) // 8
    assert torch.equal(decode(data, dtype, bits, [7, 13]), t)


def _copy(packed, scheme, tmp_path) -> Path:
    dst = tmp_path / scheme
    shutil.copytree(packed[scheme][1], dst)
    return dst


def _edit_manifest(d: Path, fn) -> None:
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m))


def _rewrite_blob(d: Path, data: bytes) -> None:
    """Replace the blob and fix its size and hash, so only deeper checks can catch the change."""
    (d / BLOB).write_bytes(data)
    _edit_manifest(d, lambda m: m["blob"].update(bytes=len(data), sha256=_sha256(data)))


def test_truncated_blob(packed, tmp_path):
    d = _copy(packed, "int8", tmp_path)
    data = (d / BLOB).read_bytes()
    (d / BLOB).write_bytes(data[:-100])
    with pytest.raises(LowbitError, match=r"weights.bin has \d+ bytes, manifest.json says \d+ \(truncated"):
        load_packed(d)


def test_corrupted_blob(packed, tmp_path):
    d = _copy(packed, "log4", tmp_path)
    data = bytearray((d / BLOB).read_bytes())
    data[10] ^= 0x40
    (d / BLOB).write_bytes(bytes(data))
    with pytest.raises(LowbitError, match="does not match its sha256"):
        load_packed(d)


def _relayout(d: Path, fn) -> None:
    """Apply ``fn`` to ``{name: bytes}`` of every tensor, then rewrite blob and manifest with
    the tensors back to back (a consistent package, so only the model's checks can object)."""
    m = json.loads((d / MANIFEST).read_text())
    data = (d / BLOB).read_bytes()
    parts = {k: data[e["offset"]:e["offset"] + e["nbytes"]] for k, e in m["tensors"].items()}
    entries = dict(m["tensors"])
    fn(parts, entries)
    offset = 0
    for name in parts:
        entries[name] = dict(entries[name], offset=offset)
        offset += len(parts[name])
    m["tensors"] = {name: entries[name] for name in parts}
    (d / MANIFEST).write_text(json.dumps(m))
    _rewrite_blob(d, b"".join(parts.values()))


def test_missing_and_unexpected_tensors(packed, tmp_path):
    d = _copy(packed, "int8", tmp_path)
    _relayout(d, lambda parts, _: parts.pop("model.decoder.layers.0.fc2.weight_scale"))
    with pytest.raises(LowbitError, match="tensor model.decoder.layers.0.fc2.weight_scale is missing"):
        load_packed(d)
    d = _copy(packed, "bmt1", tmp_path / "b")

    def add_extra(parts, entries):
        parts["extra"], entries["extra"] = parts["final_logits_bias"], entries["final_logits_bias"]
    _relayout(d, add_extra)
    with pytest.raises(LowbitError, match=r"manifest.json: unexpected tensor\(s\) extra"):
        load_packed(d)
    d = _copy(packed, "bmt1", tmp_path / "o")   # the manifest alone edited: two entries share bytes
    _edit_manifest(d, lambda m: m["tensors"].update(extra=dict(m["tensors"]["final_logits_bias"])))
    with pytest.raises(LowbitError, match="manifest.json: tensor extra: .*overlaps"):
        load_packed(d)
    d = _copy(packed, "int8", tmp_path / "g")   # an entry dropped from the manifest alone: a gap
    _edit_manifest(d, lambda m: m["tensors"].pop("model.decoder.layers.0.fc2.weight_scale"))
    with pytest.raises(LowbitError, match="fc2.bias: .*leaves a gap"):
        load_packed(d)


def test_bad_bits_dtype_and_shape(packed, tmp_path):
    name = "model.encoder.layers.0.self_attn.q_proj.weight"
    cases = [
        (lambda e: e.update(bits=9), "bits 9 invalid for dtype int"),
        (lambda e: e.update(bits=4), r"bytes do not hold shape"),
        (lambda e: e.update(dtype="float8"), "unknown dtype 'float8'"),
        (lambda e: e.update(shape=[16, 64]), "tensor .*q_proj.weight has shape \\[16, 64\\], the model needs \\[32, 32\\]"),
        (lambda e: e.update(offset=10 ** 9), "lie outside the"),
    ]
    for i, (fn, msg) in enumerate(cases):
        d = _copy(packed, "int8", tmp_path / str(i))
        _edit_manifest(d, lambda m: fn(m["tensors"][name]))
        with pytest.raises(LowbitError, match=msg):
            load_packed(d)
    d = _copy(packed, "int6", tmp_path / "w")   # int6 codes where the scheme needs int8
    _edit_manifest(d, lambda m: m.update(scheme="int8"))
    with pytest.raises(LowbitError, match="config extra.qat .*'int6'.* differs from scheme int8"):
        load_packed(d)
    _edit_manifest(d, lambda m: m["config"]["extra"]["qat"].update(scheme="int8"))
    with pytest.raises(LowbitError, match="is int6, the scheme needs int8"):
        load_packed(d)


def test_invalid_codes_and_scales_behind_a_valid_hash(packed, tmp_path):
    d = _copy(packed, "log4", tmp_path / "codes")
    m = json.loads((d / MANIFEST).read_text())
    data = bytearray((d / BLOB).read_bytes())
    s = m["tensors"]["model.encoder.layers.0.fc1.weight_scale"]
    data[s["offset"]:s["offset"] + 4] = torch.tensor([-1.0]).numpy().tobytes()
    _rewrite_blob(d, bytes(data))
    with pytest.raises(LowbitError, match="fc1.weight_scale must be positive"):
        load_packed(d)
    d = _copy(packed, "log4", tmp_path / "nan")
    m = json.loads((d / MANIFEST).read_text())
    s = m["tensors"]["model.encoder.layers.0.fc1.bias"]
    data = bytearray((d / BLOB).read_bytes())
    data[s["offset"]:s["offset"] + 4] = torch.tensor([float("nan")]).numpy().tobytes()
    _rewrite_blob(d, bytes(data))
    with pytest.raises(LowbitError, match="fc1.bias has non-finite values"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "planes")
    m = json.loads((d / MANIFEST).read_text())
    e = m["tensors"]["lm_head.row_planes"]
    data = bytearray((d / BLOB).read_bytes())
    data[e["offset"]] = 0x99          # plane count 9 > 4
    _rewrite_blob(d, bytes(data))
    with pytest.raises(LowbitError, match="row_planes has plane counts .*allowed 1..4"):
        load_packed(d)


def test_bad_manifest_files(packed, tmp_path):
    d = _copy(packed, "mixed", tmp_path / "json")
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(LowbitError, match="cannot read packed model manifest"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "version")
    _edit_manifest(d, lambda m: m.update(version=2))
    with pytest.raises(LowbitError, match="unsupported packed-model version 2"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "scheme")
    _edit_manifest(d, lambda m: m.update(scheme="int3x"))
    with pytest.raises(LowbitError, match="unknown quantization scheme 'int3x'"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "config")
    _edit_manifest(d, lambda m: m["config"].update(d_model=48))
    with pytest.raises(LowbitError, match="shape"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "nofile")
    (d / BLOB).unlink()
    with pytest.raises(LowbitError, match="weights file weights.bin is missing"):
        load_packed(d)
    d = _copy(packed, "mixed", tmp_path / "tok")
    with open(d / "spm.model", "ab") as f:
        f.write(b"x")
    with pytest.raises(LowbitError, match="tokenizer file spm.model does not match"):
        load_packed(d)


def test_write_is_atomic_and_replaces(packed, tokenizer, tmp_path):
    model, _ = packed["log1"]
    out = tmp_path / "pkg"
    write_packed(model, tokenizer, out)
    (out / "stale").write_text("old")
    write_packed(model, tokenizer, out)
    assert not (out / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg"]   # no temporary leftovers


def test_load_model_dispatches_packed_directories(packed):
    from lowbit.sw.checkpoint import load_model

    model, _, meta = load_model(packed["int8"][1])
    assert meta["packed"] and meta["scheme"] == "int8"
    assert all(m.mode == "int" for _, m in qat.quant_modules(model) if isinstance(m, QuantLinear))


@pytest.mark.parametrize("scheme,planes", [("bmt1", (6, 5, 2)), ("mixed", (5, 4, 3, 2))])
def test_word_planes_other_than_the_default_round_trip(scheme, planes, tokenizer, tmp_path):
    """`--qat-word-planes`: more planes per word than 4/3/2/1 are recorded in the config, stored
    per plane count, rebuilt on loading (the output unit gets max(planes)), and decode the same."""
    from lowbit.sw.decode import pad_batch
    from lowbit.sw.quant.schemes import get_scheme, with_word_planes

    torch.manual_seed(3)
    cfg = TransformerConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                            attention_heads=2, ffn_dim=64, dropout=0.0, attention_dropout=0.0)
    model = qat.prepare_model(Transformer(cfg), with_word_planes(get_scheme(scheme), planes))
    row_planes = qat.assign_word_planes(model, torch.arange(len(tokenizer), 0, -1).double())
    assert sorted(set(row_planes.tolist()), reverse=True) == list(planes)
    assert int(row_planes[0]) == planes[0] and int(row_planes[-1]) == planes[-1]  # id 0: most frequent
    g = torch.Generator().manual_seed(3)
    qat.calibrate(model, [(torch.randint(3, len(tokenizer), (4, 9), generator=g),
                           torch.randint(3, len(tokenizer), (4, 6), generator=g))])
    model.eval()
    directory = write_packed(model, tokenizer, tmp_path / "pkg")
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["config"]["extra"]["qat"]["word_planes"] == list(planes)
    assert {f"lm_head.p{p}.weight" for p in planes} <= set(manifest["tensors"])
    assert manifest["tensors"][f"lm_head.p{planes[0]}.weight"]["shape"][0] == planes[0]
    loaded, _, _ = load_packed(directory)
    assert loaded.lm_head.spec.w_bits == planes[0]
    assert torch.equal(loaded.lm_head.row_planes.cpu(), row_planes)
    src = pad_batch([tokenizer.encode("A man rides a bike."), tokenizer.encode("Two dogs.")], 0)
    tgt = torch.tensor([[0, 5, 6, 7], [0, 8, 9, 10]])
    assert torch.equal(loaded(src, tgt), qat.to_integer(model)(src, tgt))
