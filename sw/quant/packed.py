"""Packed deployable models: integer weights at their real bit width, a manifest, one blob.

A packed model is a directory::

    manifest.json   format, version, scheme, model config, every tensor (dtype, bits, shape,
                    byte offset and length in the blob), every matmul (unit and parameters),
                    sha256 of the blob and of the tokenizer files, statistics
    weights.bin     the tensors, back to back
    spm.model       the tokenizer (or Marian's source.spm / target.spm / vocab.json)
    meta.json       description (for ``lowbit models``)

Tensor encodings (``dtype`` in the manifest; multi-byte values little-endian):

=======  ====================================================================================
f32      IEEE float32
int      two's complement ``bits`` wide (2..8), packed LSB first into a bit stream (int8: bytes)
uint     unsigned ``bits`` wide (1..16), packed the same way (log codes, plane scales ``alpha``,
         per-word plane counts)
sign     +-1 bit planes ``[P, N, K]``: each row packed by ``golden.pack_bits`` (bit ``k % 32``
         of 32-bit word ``k // 32``, 1 = +1), words stored as uint32
=======  ====================================================================================

Per quantized ``nn.Linear`` called ``NAME``: ``NAME.weight`` (int / uint log codes / sign planes),
``NAME.weight_scale`` (f32: per channel ``s_w``, or the log scale ``S``), ``NAME.alpha`` (uint16
plane scales, XNOR), ``NAME.bias`` (f32), ``NAME.act.amax`` (f32 input range, per-tensor inputs).
Per-word planes (mixed): ``NAME.row_planes`` (uint4) and ``NAME.pP.{weight,alpha,weight_scale}``
for each plane count ``P``. Per quantized ``MatMul``: ``NAME.a_act.amax``, ``NAME.b_act.amax``.
Everything else (LayerNorms, float layers, ``final_logits_bias``) is f32 under its state-dict name.

The size of ``weights.bin`` + ``manifest.json`` is the model size reported (the tokenizer is the
same for every model and not counted). Loading checks everything (see :func:`load_packed`):
a malformed package raises :class:`LowbitError` naming the problem, never decodes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from lowbit import LowbitError, __version__
from lowbit.sw import golden

from .modules import ActQuant, QuantEmbedding, QuantLinear, QuantMatMul
from .weights import BinaryWeights, IntWeights, LogWeights, RowGroups

FORMAT = "lowbit-packed"
VERSION = 1
MANIFEST = "manifest.json"
BLOB = "weights.bin"
TOKENIZER_FILES = ("spm.model", "source.spm", "target.spm", "vocab.json")


# ---------------------------------------------------------------------------------------------
# Encodings


def _nbytes(dtype: str, bits: int, shape) -> int:
    n = int(np.prod(shape)) if len(shape) else 1
    if dtype == "f32":
        return 4 * n
    if dtype in ("int", "uint"):
        return (n * bits + 7) // 8
    if dtype == "sign":
        p, rows, k = shape
        return p * rows * ((k + golden.WORD_BITS - 1) // golden.WORD_BITS) * 4
    raise ValueError(dtype)


def _pack_stream(values: np.ndarray, bits: int) -> bytes:
    """Unsigned integers < 2**bits -> LSB-first bit stream."""
    values = values.astype(np.uint64).reshape(-1)
    if bits == 8:
        return values.astype(np.uint8).tobytes()
    if bits == 16:
        return values.astype("<u2").tobytes()
    planes = ((values[:, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def _unpack_stream(buf: bytes, n: int, bits: int) -> np.ndarray:
    if bits == 8:
        return np.frombuffer(buf, np.uint8).astype(np.int64)
    if bits == 16:
        return np.frombuffer(buf, "<u2").astype(np.int64)
    planes = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")[:n * bits]
    return (planes.reshape(n, bits).astype(np.int64) << np.arange(bits, dtype=np.int64)).sum(1)


def encode(t: torch.Tensor, dtype: str, bits: int) -> bytes:
    t = t.detach().cpu()
    if dtype == "f32":
        return t.to(torch.float32).numpy().astype("<f4").tobytes()
    if dtype == "int":
        v = golden.check_signed("packed integers", t, bits).numpy() & ((1 << bits) - 1)
        return _pack_stream(v, bits)
    if dtype == "uint":
        return _pack_stream(golden.check_range("packed integers", t, 0, (1 << bits) - 1).numpy(), bits)
    if dtype == "sign":
        return golden.pack_bits(t).numpy().astype("<u4").tobytes()
    raise ValueError(dtype)


def decode(buf: bytes, dtype: str, bits: int, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    if dtype == "f32":
        return torch.from_numpy(np.frombuffer(buf, "<f4").astype(np.float32)).reshape(shape)
    if dtype in ("int", "uint"):
        v = _unpack_stream(buf, n, bits)
        if dtype == "int":
            v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
        return torch.from_numpy(v).reshape(shape)
    if dtype == "sign":
        p, rows, k = shape
        words = torch.from_numpy(np.frombuffer(buf, "<u4").astype(np.int64))
        return golden.unpack_bits(words.reshape(p, rows, -1), k)
    raise ValueError(dtype)


# ---------------------------------------------------------------------------------------------
# Model -> tensors


def _weight_entries(name: str, qw) -> dict:
    """``{tensor name: (tensor, dtype, bits)}`` of a quantized weight."""
    if isinstance(qw, IntWeights):
        return {f"{name}.weight": (qw.values, "int", qw.bits),
                f"{name}.weight_scale": (qw.scale, "f32", 32)}
    if isinstance(qw, LogWeights):
        return {f"{name}.weight": (qw.codes, "uint", qw.bits),
                f"{name}.weight_scale": (torch.tensor(qw.log_scale), "f32", 32)}
    if isinstance(qw, BinaryWeights):
        return {f"{name}.weight": (qw.signs, "sign", 1),
                f"{name}.alpha": (qw.alpha, "uint", golden.ALPHA_BITS),
                f"{name}.weight_scale": (qw.scale, "f32", 32)}
    if isinstance(qw, RowGroups):
        planes = torch.zeros(qw.n_rows, dtype=torch.int64)
        out = {}
        for rows, part in qw.groups:
            planes[rows.cpu()] = part.planes
            out.update(_weight_entries(f"{name}.p{part.planes}", part))
        return {f"{name}.row_planes": (planes, "uint", 4), **out}
    raise TypeError(type(qw).__name__)


def model_tensors(model) -> dict:
    """Every tensor a packed model stores: ``{name: (tensor, dtype, bits)}``, in model order.

    ``model`` is a prepared (fake-quant) model with calibrated ranges, in eval mode.
    """
    from .qat import quant_modules

    out, covered = {}, set()
    for name, m in quant_modules(model):
        if isinstance(m, QuantLinear):
            out.update(_weight_entries(name, m.quantized_weight()))
            if m.bias is not None:
                out[f"{name}.bias"] = (m.bias, "f32", 32)
            if m.act.per_tensor:
                out[f"{name}.act.amax"] = (m.act.amax, "f32", 32)
        elif isinstance(m, QuantMatMul):
            out[f"{name}.a_act.amax"] = (m.a_act.amax, "f32", 32)
            out[f"{name}.b_act.amax"] = (m.b_act.amax, "f32", 32)
        covered.update(f"{name}.{k}" for k in m.state_dict())
    if model.config.tie_word_embeddings:
        covered.add("lm_head.weight")
    for key, t in model.state_dict().items():
        if key not in covered:
            out[key] = (t, "f32", 32)
    return out


def weight_stats(model) -> dict:
    """Bits per weight of a prepared model: code bits over all weight-matrix elements (the tied
    embedding/output matrix counted once; float matrices count 32 bits)."""
    from lowbit.sw.model import MatMul  # noqa: F401  (model import keeps the module graph simple)

    seen, elements, code_bits, float_elements = set(), 0, 0, 0
    params = sum(p.numel() for p in model.parameters())
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.dim() != 2 or id(w) in seen:
            continue
        seen.add(id(w))
        elements += w.numel()
        if isinstance(m, QuantLinear):
            code_bits += m.quantized_weight().code_bits()
        elif isinstance(m, QuantEmbedding):
            code_bits += m.owner.quantized_weight().code_bits()
        else:
            code_bits += 32 * w.numel()
            float_elements += w.numel()
    return {"weight_elements": elements, "weight_code_bits": code_bits,
            "bits_per_weight": code_bits / max(elements, 1), "float_weight_elements": float_elements,
            "parameters": params}


# ---------------------------------------------------------------------------------------------
# Writing


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_packed(model, tokenizer, out_dir, meta: dict | None = None) -> Path:
    """Write prepared ``model`` (fake-quant, calibrated) as a packed model directory ``out_dir``.

    The directory is assembled beside ``out_dir`` and renamed into place, so a reader never sees
    a half-written package. Returns ``out_dir``.
    """
    from .qat import matmul_inventory, scheme_of

    model.eval()
    scheme = scheme_of(model)
    if scheme is None:
        raise LowbitError("the model has no quantization scheme (prepare it first)")
    out_dir = Path(out_dir)
    tensors = model_tensors(model)
    entries, chunks, offset = {}, [], 0
    for name, (t, dtype, bits) in tensors.items():
        data = encode(t, dtype, bits)
        entries[name] = {"dtype": dtype, "bits": bits, "shape": list(t.shape), "offset": offset,
                         "nbytes": len(data)}
        chunks.append(data)
        offset += len(data)
    blob = b"".join(chunks)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / BLOB).write_bytes(blob)
    tokenizer.save(tmp)
    tok = {f: _sha256((tmp / f).read_bytes()) for f in TOKENIZER_FILES if (tmp / f).is_file()}
    inventory = matmul_inventory(model)
    for item in inventory:
        item["weight"] = f"{item['name']}.weight" if f"{item['name']}.weight" in entries else None
    stats = weight_stats(model)
    stats["integer_matmuls"] = sum(1 for i in inventory if i["unit"] != "float")
    stats["matmuls"] = len(inventory)
    manifest = {"format": FORMAT, "version": VERSION, "scheme": scheme.name,
                "description": scheme.description, "config": model.config.to_dict(),
                "blob": {"file": BLOB, "bytes": len(blob), "sha256": _sha256(blob)},
                "tokenizer": tok, "tensors": entries, "matmuls": inventory, "stats": stats,
                "created_by": f"lowbit {__version__}", "meta": meta or {}}
    # compact JSON: the manifest counts in the reported size (`python -m json.tool` to read it)
    (tmp / MANIFEST).write_text(json.dumps(manifest, separators=(",", ":")) + "\n", encoding="utf-8")
    (tmp / "meta.json").write_text(json.dumps(
        {"description": f"packed {scheme.name}: {scheme.description}"}, indent=2) + "\n",
        encoding="utf-8")
    old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old.exists():
        shutil.rmtree(old)
    return out_dir


def package_size(directory) -> int:
    """Reported model size: bytes of the blob plus the manifest."""
    directory = Path(directory)
    return (directory / BLOB).stat().st_size + (directory / MANIFEST).stat().st_size


# ---------------------------------------------------------------------------------------------
# Reading and validation


def is_packed(directory) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def read_manifest(directory) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LowbitError(f"cannot read packed model manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LowbitError(f"{path} is not a lowbit packed-model manifest (format must be {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise LowbitError(f"{path}: unsupported packed-model version {manifest.get('version')!r} "
                          f"(this lowbit reads version {VERSION})")
    for key, kind in (("scheme", str), ("config", dict), ("blob", dict), ("tensors", dict),
                      ("tokenizer", dict)):
        if not isinstance(manifest.get(key), kind):
            raise LowbitError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    return manifest


def _read_blob(directory: Path, manifest: dict) -> bytes:
    info = manifest["blob"]
    path = directory / str(info.get("file", BLOB))
    if path.name != BLOB or not path.is_file():
        raise LowbitError(f"packed model {directory}: weights file {path.name} is missing")
    data = path.read_bytes()
    if not isinstance(info.get("bytes"), int) or len(data) != info["bytes"]:
        raise LowbitError(f"packed model {directory}: {BLOB} has {len(data)} bytes, the manifest "
                          f"says {info.get('bytes')} (truncated or modified file)")
    if _sha256(data) != info.get("sha256"):
        raise LowbitError(f"packed model {directory}: {BLOB} does not match its sha256 in the "
                          f"manifest (corrupted or modified file)")
    for name, digest in manifest["tokenizer"].items():
        if name not in TOKENIZER_FILES:
            raise LowbitError(f"packed model {directory}: unknown tokenizer file {name!r}")
        tpath = directory / name
        if not tpath.is_file():
            raise LowbitError(f"packed model {directory}: tokenizer file {name} is missing")
        if _sha256(tpath.read_bytes()) != digest:
            raise LowbitError(f"packed model {directory}: tokenizer file {name} does not match "
                              f"its sha256 in the manifest")
    return data


_DTYPE_BITS = {"f32": (32, 32), "int": (2, 8), "uint": (1, 16), "sign": (1, 1)}


def _check_entry(directory, name: str, e, blob_len: int) -> None:
    where = f"packed model {directory}: tensor {name}"
    if not isinstance(e, dict):
        raise LowbitError(f"{where}: entry must be an object")
    dtype, bits, shape = e.get("dtype"), e.get("bits"), e.get("shape")
    if dtype not in _DTYPE_BITS:
        raise LowbitError(f"{where}: unknown dtype {dtype!r}")
    lo, hi = _DTYPE_BITS[dtype]
    if not isinstance(bits, int) or isinstance(bits, bool) or not lo <= bits <= hi:
        raise LowbitError(f"{where}: bits {bits!r} invalid for dtype {dtype} ({lo}..{hi})")
    if (not isinstance(shape, list) or not all(isinstance(d, int) and d >= 1 for d in shape)
            or (dtype == "sign" and len(shape) != 3)):
        raise LowbitError(f"{where}: bad shape {shape!r}")
    off, n = e.get("offset"), e.get("nbytes")
    if not isinstance(off, int) or not isinstance(n, int) or off < 0 or n < 0:
        raise LowbitError(f"{where}: bad offset/nbytes {off!r}/{n!r}")
    if n != _nbytes(dtype, bits, shape):
        raise LowbitError(f"{where}: {n} bytes do not hold shape {shape} of {dtype}{bits} "
                          f"({_nbytes(dtype, bits, shape)} bytes)")
    if off + n > blob_len:
        raise LowbitError(f"{where}: bytes {off}..{off + n} lie outside the {blob_len}-byte blob")


class _Reader:
    """Decodes manifest tensors from the blob, checking each against what the model expects."""

    def __init__(self, directory, manifest, blob):
        self.directory, self.entries, self.blob = directory, manifest["tensors"], blob
        self.used = set()
        spans = []
        for name, e in self.entries.items():
            _check_entry(directory, name, e, len(blob))
            spans.append((e["offset"], e["offset"] + e["nbytes"], name))
        spans.sort()
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise LowbitError(f"packed model {directory}: tensors {an} and {bn} overlap")

    def get(self, name: str, dtype: str, shape, bits: int | None = None) -> torch.Tensor:
        e = self.entries.get(name)
        if e is None:
            raise LowbitError(f"packed model {self.directory}: tensor {name} is missing")
        if e["dtype"] != dtype or (bits is not None and e["bits"] != bits):
            raise LowbitError(f"packed model {self.directory}: tensor {name} is "
                              f"{e['dtype']}{e['bits']}, the scheme needs {dtype}"
                              f"{bits if bits is not None else ''}")
        if shape is not None and list(shape) != e["shape"]:
            raise LowbitError(f"packed model {self.directory}: tensor {name} has shape {e['shape']}, "
                              f"the model needs {list(shape)}")
        self.used.add(name)
        t = decode(self.blob[e["offset"]:e["offset"] + e["nbytes"]], dtype, e["bits"], e["shape"])
        if dtype == "f32" and t.numel() and not bool(torch.isfinite(t).all()):
            raise LowbitError(f"packed model {self.directory}: tensor {name} has non-finite values")
        return t

    def positive(self, name: str, shape, allow_zero: bool = False) -> torch.Tensor:
        t = self.get(name, "f32", shape).to(torch.float64)
        if t.numel() and (float(t.min()) < 0 or (not allow_zero and float(t.min()) == 0)):
            raise LowbitError(f"packed model {self.directory}: tensor {name} must be positive")
        return t

    def finish(self) -> None:
        extra = sorted(set(self.entries) - self.used)
        if extra:
            raise LowbitError(f"packed model {self.directory}: unexpected tensor(s) "
                              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def _read_binary(r: _Reader, prefix: str, planes: int | None, rows: int, k: int,
                 bmt: bool) -> BinaryWeights:
    e = r.entries.get(f"{prefix}.weight")
    if planes is None:
        planes = e["shape"][0] if e else 1
    if not 1 <= planes <= 8:
        raise LowbitError(f"packed model {r.directory}: tensor {prefix}.weight has {planes} planes "
                          f"(1..8 allowed)")
    signs = r.get(f"{prefix}.weight", "sign", (planes, rows, k), 1)
    alpha = r.get(f"{prefix}.alpha", "uint", (planes, rows), golden.ALPHA_BITS)
    scale = r.positive(f"{prefix}.weight_scale", (rows,), allow_zero=bmt)
    return BinaryWeights(signs, alpha, scale)


def _read_weight(r: _Reader, name: str, m: QuantLinear):
    spec, n, k = m.spec, m.out_features, m.in_features
    if spec.weights == "int":
        return IntWeights(r.get(f"{name}.weight", "int", (n, k), spec.w_bits),
                          r.positive(f"{name}.weight_scale", (n,)), spec.w_bits)
    if spec.weights == "log":
        codes = r.get(f"{name}.weight", "uint", (n, k), spec.w_bits)
        try:
            golden.log_code_fields(codes, spec.w_bits)
        except ValueError as e:
            raise LowbitError(f"packed model {r.directory}: tensor {name}.weight: {e}") from None
        s = r.positive(f"{name}.weight_scale", ())
        return LogWeights(codes, float(s), spec.w_bits)
    if spec.weights in ("binary", "bmt"):
        planes = spec.w_bits
        qw = _read_binary(r, name, planes, n, k, spec.weights == "bmt")
        if spec.weights == "bmt" and bool((qw.alpha != 1).any()):
            raise LowbitError(f"packed model {r.directory}: tensor {name}.alpha must be all 1 "
                              f"(BMT weights)")
        return qw
    if spec.weights == "rows":
        planes = r.get(f"{name}.row_planes", "uint", (n,), 4)
        allowed = set(range(1, spec.w_bits + 1))
        used = sorted(set(planes.tolist()))
        if not set(used) <= allowed:
            raise LowbitError(f"packed model {r.directory}: tensor {name}.row_planes has plane "
                              f"counts {used}, allowed 1..{spec.w_bits}")
        m.row_planes.copy_(planes)
        groups = []
        for p in sorted(used, reverse=True):
            rows = torch.nonzero(planes == p).flatten()
            groups.append((rows, _read_binary(r, f"{name}.p{p}", p, len(rows), k, False)))
        return RowGroups(groups, n, k)
    raise LowbitError(f"packed model {r.directory}: unknown weight kind {spec.weights!r}")


def load_packed(directory, device="cpu"):
    """Load a packed model into integer mode (golden kernels) on ``device``.

    Returns ``(model, tokenizer, meta)`` like :func:`lowbit.sw.checkpoint.load_model`; ``meta``
    holds the manifest's scheme, stats and matmul inventory. Every check failing raises
    :class:`LowbitError`: unreadable/unknown manifest, wrong version, blob size or sha256,
    tokenizer hash, a tensor missing, unexpected, overlapping, outside the blob, of the wrong
    dtype/bits/shape, invalid codes or scales, a config the model rejects.
    """
    from lowbit.sw.model import Transformer, TransformerConfig
    from lowbit.sw.tokenizer import Tokenizer

    from .qat import prepare_model, quant_modules
    from .schemes import get_scheme

    directory = Path(directory)
    manifest = read_manifest(directory)
    blob = _read_blob(directory, manifest)
    scheme = get_scheme(manifest["scheme"])
    cfg = TransformerConfig.from_dict(manifest["config"])
    if cfg.bmt_norms != scheme.bmt_norms:
        raise LowbitError(f"packed model {directory}: config bmt_norms={cfg.bmt_norms} does not fit "
                          f"scheme {scheme.name}")
    cfg.extra = {k: v for k, v in cfg.extra.items() if k != "qat"}
    model = prepare_model(Transformer(cfg), scheme)
    model.config.extra["qat"] = manifest["config"].get("extra", {}).get("qat", model.config.extra["qat"])
    r = _Reader(directory, manifest, blob)
    covered = set()
    with torch.no_grad():
        for name, m in quant_modules(model):
            covered.update(f"{name}.{k}" for k in m.state_dict())
            if isinstance(m, QuantLinear):
                qw = _read_weight(r, name, m)
                amax = r.positive(f"{name}.act.amax", ()) if m.act.per_tensor else None
                if m.bias is not None:
                    m.bias.copy_(r.get(f"{name}.bias", "f32", m.bias.shape))
                m.set_integer(qw, amax)
            elif isinstance(m, QuantMatMul):
                m.set_integer(r.positive(f"{name}.a_act.amax", ()),
                              r.positive(f"{name}.b_act.amax", ()))
        if cfg.tie_word_embeddings:
            covered.add("lm_head.weight")
        state = model.state_dict()
        for key, t in state.items():
            if key not in covered:
                t.copy_(r.get(key, "f32", t.shape))
        r.finish()
        for _, m in quant_modules(model):
            if isinstance(m, QuantEmbedding):
                m.set_integer()
    tokenizer = Tokenizer.from_dir(directory)
    if len(tokenizer) > cfg.vocab_size:
        raise LowbitError(f"packed model {directory}: tokenizer has {len(tokenizer)} ids but the "
                          f"model's vocab_size is {cfg.vocab_size}")
    model.eval()
    if quant_modules(model):  # host arithmetic in float64 (docs/quantization.md)
        model.double()
    meta = {"path": str(directory), "scheme": scheme.name, "stats": manifest.get("stats", {}),
            "matmuls": manifest.get("matmuls", []), "packed": True,
            "retrained": bool(((manifest.get("meta") or {}).get("source_meta") or {})
                              .get("trained_with", {}).get("init")),
            "size_bytes": package_size(directory)}
    return model.to(device), tokenizer, meta


def acts_calibrated(model) -> bool:
    """Whether every per-tensor activation range of a prepared model has been set."""
    return all(float(a.amax) > 0 for a in model.modules() if isinstance(a, ActQuant) and a.per_tensor)
