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
import math
from pathlib import Path

import numpy as np
import torch

from lowbit import LowbitError, __version__
from lowbit.io import atomic_dir
from lowbit.sw import golden

from .integer import IntegerTransformer
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
    # math.prod on Python ints: a corrupted shape must not overflow into a plausible size
    n = math.prod(shape)
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
    a half-written package (:func:`lowbit.io.atomic_dir`); callers check ``out_dir`` first with
    :func:`lowbit.io.check_output_dir`. Returns ``out_dir``.
    """
    from .qat import scheme_of

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
    with atomic_dir(out_dir) as tmp:
        _write_package(tmp, model, tokenizer, scheme, entries, blob, meta)
    return out_dir


def _write_package(tmp: Path, model, tokenizer, scheme, entries: dict, blob: bytes,
                   meta: dict | None) -> None:
    from .qat import matmul_inventory

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


def package_size(directory) -> int:
    """Reported model size: bytes of the blob plus the manifest."""
    directory = Path(directory)
    return (directory / BLOB).stat().st_size + (directory / MANIFEST).stat().st_size


# ---------------------------------------------------------------------------------------------
# Reading and validation


def is_packed(directory) -> bool:
    return (Path(directory) / MANIFEST).is_file()


# Every field write_packed writes, and the JSON type it must have.
_MANIFEST_FIELDS = {"format": str, "version": int, "scheme": str, "description": str,
                    "config": dict, "blob": dict, "tokenizer": dict, "tensors": dict,
                    "matmuls": list, "stats": dict, "created_by": str, "meta": dict}
_ENTRY_FIELDS = ("dtype", "bits", "shape", "offset", "nbytes")
_DTYPE_BITS = {"f32": (32, 32), "int": (2, 8), "uint": (1, 16), "sign": (1, 1)}
# The tokenizer file sets a package may hold: a joint model, or Marian's three files.
_TOKENIZER_SETS = ({"spm.model"}, {"source.spm", "target.spm", "vocab.json"})


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def read_manifest(directory) -> dict:
    """Read ``manifest.json`` of a packed model and check its whole schema.

    Checked before anything is built: every field present with its JSON type and nothing
    else, the blob and tokenizer records (file names, sizes, sha256 digests), and every
    tensor entry (dtype, bits in the dtype's range, shape, ``nbytes`` exactly what the shape
    needs, tensors back to back in manifest order, filling the blob). Raises
    :class:`LowbitError` naming ``manifest.json`` and the first problem found.
    """
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise LowbitError(f"cannot read packed model manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LowbitError(f"{path} is not a lowbit packed-model manifest (format must be {FORMAT!r})")
    if manifest.get("version") != VERSION or not _is_int(manifest["version"]):
        raise LowbitError(f"{path}: unsupported packed-model version {manifest.get('version')!r} "
                          f"(this lowbit reads version {VERSION})")
    for key, kind in _MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind):
            raise LowbitError(f"{path}: field {key!r} is missing or not a {kind.__name__}")
    unknown = sorted(set(manifest) - set(_MANIFEST_FIELDS))
    if unknown:
        raise LowbitError(f"{path}: unknown field(s) {', '.join(map(repr, unknown))}")
    blob = manifest["blob"]
    if (set(blob) != {"file", "bytes", "sha256"} or blob["file"] != BLOB
            or not _is_int(blob["bytes"]) or blob["bytes"] < 0 or not _is_sha256(blob["sha256"])):
        raise LowbitError(f"{path}: field 'blob' must be {{\"file\": \"{BLOB}\", \"bytes\": "
                          f"<size>, \"sha256\": <64 hex digits>}}, not {_short(blob)}")
    tok = manifest["tokenizer"]
    if set(tok) not in _TOKENIZER_SETS or not all(_is_sha256(v) for v in tok.values()):
        raise LowbitError(f"{path}: field 'tokenizer' must map spm.model (or source.spm, "
                          f"target.spm and vocab.json) to sha256 digests, not {_short(tok)}")
    offset = 0
    for name, e in manifest["tensors"].items():
        _check_entry(path, name, e, offset, blob["bytes"])
        offset += e["nbytes"]
    if offset != blob["bytes"]:
        raise LowbitError(f"{path}: the tensors fill {offset} bytes of the {blob['bytes']}-byte "
                          f"blob")
    if not all(isinstance(m, dict) for m in manifest["matmuls"]):
        raise LowbitError(f"{path}: field 'matmuls' must be a list of objects")
    return manifest


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_entry(path: Path, name: str, e, offset: int, blob_len: int) -> None:
    """One tensor entry of the manifest; ``offset``: where the previous tensor ended."""
    where = f"{path}: tensor {name}"
    if not isinstance(e, dict) or set(e) != set(_ENTRY_FIELDS):
        raise LowbitError(f"{where}: entry must be an object with the fields "
                          f"{', '.join(_ENTRY_FIELDS)}, not {_short(e)}")
    dtype, bits, shape = e["dtype"], e["bits"], e["shape"]
    if dtype not in _DTYPE_BITS:
        raise LowbitError(f"{where}: unknown dtype {_short(dtype)}")
    lo, hi = _DTYPE_BITS[dtype]
    if not _is_int(bits) or not lo <= bits <= hi:
        raise LowbitError(f"{where}: bits {_short(bits)} invalid for dtype {dtype} ({lo}..{hi})")
    if (not isinstance(shape, list) or not all(_is_int(d) and d >= 1 for d in shape)
            or (dtype == "sign" and len(shape) != 3)):
        raise LowbitError(f"{where}: bad shape {_short(shape)}")
    off, n = e["offset"], e["nbytes"]
    if not _is_int(off) or not _is_int(n) or off < 0 or n < 0:
        raise LowbitError(f"{where}: bad offset/nbytes {_short(off)}/{_short(n)}")
    need = _nbytes(dtype, bits, shape)
    if n != need:
        raise LowbitError(f"{where}: {n} bytes do not hold shape {_short(shape)} of {dtype}{bits} "
                          f"({need} bytes)")
    if off + n > blob_len:
        raise LowbitError(f"{where}: bytes {off}..{off + n} lie outside the {blob_len}-byte blob")
    if off != offset:   # write_packed stores the tensors back to back, in manifest order
        what = "overlaps" if off < offset else "leaves a gap after"
        raise LowbitError(f"{where}: bytes {off}..{off + n} {what} the tensor before it (which "
                          f"ends at byte {offset})")


def _read_file(directory: Path, name: str, what: str) -> bytes:
    path = directory / name
    if not path.is_file():
        state = "is not a file" if path.exists() else "is missing"
        raise LowbitError(f"packed model {directory}: {what} {name} {state}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise LowbitError(f"packed model {directory}: cannot read {what} {name}: "
                          f"{e.strerror or e}") from None


def _read_blob(directory: Path, manifest: dict) -> bytes:
    """The blob, checked against its size and sha256, and the tokenizer files' digests."""
    info = manifest["blob"]
    data = _read_file(directory, BLOB, "weights file")
    if len(data) != info["bytes"]:
        raise LowbitError(f"packed model {directory}: {BLOB} has {len(data)} bytes, {MANIFEST} "
                          f"says {info['bytes']} (truncated or modified file)")
    if _sha256(data) != info["sha256"]:
        raise LowbitError(f"packed model {directory}: {BLOB} does not match its sha256 in "
                          f"{MANIFEST} (corrupted or modified file)")
    for name, digest in manifest["tokenizer"].items():
        if _sha256(_read_file(directory, name, "tokenizer file")) != digest:
            raise LowbitError(f"packed model {directory}: tokenizer file {name} does not match "
                              f"its sha256 in {MANIFEST}")
    return data


class _Reader:
    """Decodes manifest tensors from the blob, checking each against what the model expects.

    Entries were checked by :func:`read_manifest`. Problems with what the manifest declares
    name ``manifest.json``; problems with decoded values name ``weights.bin``.
    """

    def __init__(self, directory: Path, manifest, blob):
        self.entries, self.blob = manifest["tensors"], blob
        self.where, self.data_where = directory / MANIFEST, directory / BLOB
        self.used = set()

    def get(self, name: str, dtype: str, shape, bits: int | None = None) -> torch.Tensor:
        e = self.entries.get(name)
        if e is None:
            raise LowbitError(f"{self.where}: tensor {name} is missing")
        if e["dtype"] != dtype or (bits is not None and e["bits"] != bits):
            raise LowbitError(f"{self.where}: tensor {name} is {e['dtype']}{e['bits']}, the "
                              f"scheme needs {dtype}{bits if bits is not None else ''}")
        if shape is not None and list(shape) != e["shape"]:
            raise LowbitError(f"{self.where}: tensor {name} has shape {e['shape']}, the model "
                              f"needs {list(shape)}")
        self.used.add(name)
        t = decode(self.blob[e["offset"]:e["offset"] + e["nbytes"]], dtype, e["bits"], e["shape"])
        if dtype == "f32" and t.numel() and not bool(torch.isfinite(t).all()):
            raise LowbitError(f"{self.data_where}: tensor {name} has non-finite values")
        return t

    def positive(self, name: str, shape, allow_zero: bool = False) -> torch.Tensor:
        t = self.get(name, "f32", shape).to(torch.float64)
        if t.numel() and (float(t.min()) < 0 or (not allow_zero and float(t.min()) == 0)):
            raise LowbitError(f"{self.data_where}: tensor {name} must be positive")
        return t

    def finish(self) -> None:
        extra = sorted(set(self.entries) - self.used)
        if extra:
            raise LowbitError(f"{self.where}: unexpected tensor(s) "
                              f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")


def _read_binary(r: _Reader, prefix: str, planes: int | None, rows: int, k: int,
                 bmt: bool) -> BinaryWeights:
    e = r.entries.get(f"{prefix}.weight")
    if planes is None:
        planes = e["shape"][0] if e else 1
    if not 1 <= planes <= 8:
        raise LowbitError(f"{r.where}: tensor {prefix}.weight has {planes} planes (1..8 allowed)")
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
            raise LowbitError(f"{r.data_where}: tensor {name}.weight: {e}") from None
        s = r.positive(f"{name}.weight_scale", ())
        return LogWeights(codes, float(s), spec.w_bits)
    if spec.weights in ("binary", "bmt"):
        planes = spec.w_bits
        qw = _read_binary(r, name, planes, n, k, spec.weights == "bmt")
        if spec.weights == "bmt" and bool((qw.alpha != 1).any()):
            raise LowbitError(f"{r.data_where}: tensor {name}.alpha must be all 1 (BMT weights)")
        return qw
    if spec.weights == "rows":
        planes = r.get(f"{name}.row_planes", "uint", (n,), 4)
        allowed = set(range(1, spec.w_bits + 1))
        used = sorted(set(planes.tolist()))
        if not set(used) <= allowed:
            raise LowbitError(f"{r.data_where}: tensor {name}.row_planes has plane counts {used}, "
                              f"allowed 1..{spec.w_bits}")
        m.row_planes.copy_(planes)
        groups = []
        for p in sorted(used, reverse=True):
            rows = torch.nonzero(planes == p).flatten()
            groups.append((rows, _read_binary(r, f"{name}.p{p}", p, len(rows), k, False)))
        return RowGroups(groups, n, k)
    raise LowbitError(f"{r.where}: unknown weight kind {spec.weights!r}")


def _retrained(meta: dict) -> bool:
    """Whether the package's source model was retrained from another (``meta`` is free-form)."""
    source = meta.get("source_meta")
    trained = source.get("trained_with") if isinstance(source, dict) else None
    return bool(trained.get("init")) if isinstance(trained, dict) else False


def load_packed(directory, device="cpu"):
    """Load a packed model into integer mode (golden kernels) on ``device``.

    Returns ``(model, tokenizer, meta)`` like :func:`lowbit.sw.checkpoint.load_model`; ``meta``
    holds the manifest's scheme, stats and matmul inventory.

    Raises
    ------
    LowbitError
        Naming the file at fault (``manifest.json``, ``weights.bin`` or a tokenizer file) for
        every problem: an unreadable manifest or one outside the schema of
        :func:`read_manifest`, a config the model rejects or larger than the blob can hold, a
        scheme that does not fit the config, a blob or tokenizer file whose size or sha256
        differs from the manifest, a tensor missing, unexpected, of the wrong dtype/bits/shape,
        invalid codes or scales, a matmul inventory that differs from the scheme's. The checks
        that need no model run before the model is built.
    """
    from lowbit.sw.model import Transformer, TransformerConfig, check_fits
    from lowbit.sw.tokenizer import Tokenizer

    from .qat import matmul_inventory, prepare_model, quant_modules
    from .schemes import get_scheme

    directory = Path(directory)
    where = directory / MANIFEST
    manifest = read_manifest(directory)
    try:
        cfg = TransformerConfig.from_dict(manifest["config"])
        scheme = get_scheme(manifest["scheme"], cfg.extra.get("qat"))  # as the package was made
        check_fits(cfg, manifest["blob"]["bytes"], len(manifest["tensors"]), BLOB)
    except LowbitError as e:
        raise LowbitError(f"{where}: {e}") from None
    if cfg.bmt_norms != scheme.bmt_norms:
        raise LowbitError(f"{where}: config bmt_norms={cfg.bmt_norms} does not fit scheme "
                          f"{scheme.name}")
    blob = _read_blob(directory, manifest)
    qat_info = cfg.extra.pop("qat", None)
    try:
        model = prepare_model(Transformer(cfg), scheme)
    except LowbitError as e:     # the scheme's own demands on the config (tied embeddings)
        raise LowbitError(f"{where}: {e}") from None
    if qat_info is not None and qat_info != model.config.extra["qat"]:
        raise LowbitError(f"{where}: config extra.qat {_short(qat_info)} differs from scheme "
                          f"{scheme.name}'s {model.config.extra['qat']}")
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
    inventory = matmul_inventory(model)
    for item in inventory:
        item["weight"] = f"{item['name']}.weight" if f"{item['name']}.weight" in r.entries else None
    if manifest["matmuls"] != inventory:
        raise LowbitError(f"{where}: field 'matmuls' differs from the matmuls of scheme "
                          f"{scheme.name} on this config")
    if set(manifest["tokenizer"]) == {"spm.model"}:
        tokenizer = Tokenizer(directory / "spm.model")
    else:
        tokenizer = Tokenizer.from_marian_files(directory)
    if len(tokenizer) > cfg.vocab_size:
        raise LowbitError(f"{where}: the tokenizer has {len(tokenizer)} ids but the model's "
                          f"vocab_size is {cfg.vocab_size}")
    model.eval()
    if quant_modules(model):  # host arithmetic in float64 (docs/quantization.md)
        model.double()
    if isinstance(model, IntegerTransformer):  # no host arithmetic at all
        model.set_integer_only()
    meta = {"path": str(directory), "scheme": scheme.name, "stats": manifest["stats"],
            "matmuls": manifest["matmuls"], "packed": True,
            "retrained": _retrained(manifest["meta"]), "size_bytes": package_size(directory)}
    return model.to(device), tokenizer, meta


def acts_calibrated(model) -> bool:
    """Whether every per-tensor activation range of a prepared model has been set."""
    return all(float(a.amax) > 0 for a in model.modules() if isinstance(a, ActQuant) and a.per_tensor)
