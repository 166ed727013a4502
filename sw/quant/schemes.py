"""The quantization schemes: which unit, weight code and input code each matmul of the model gets.

Matmuls are found by their Marian names (see :mod:`lowbit.sw.model`) and sorted into blocks:

===============  =====================================================================
block            modules
===============  =====================================================================
enc_self_attn    ``model.encoder.layers.N.self_attn.{q,k,v,out}_proj`` (+ ``qk``, ``av``)
enc_ffn          ``model.encoder.layers.N.fc1``, ``fc2``
dec_self_attn    ``model.decoder.layers.N.self_attn.*``
enc_dec_attn     ``model.decoder.layers.N.encoder_attn.*``
dec_ffn          ``model.decoder.layers.N.fc1``, ``fc2``
output           ``lm_head`` (tied to the embedding ``model.shared``)
===============  =====================================================================

Schemes (names accepted by ``--scheme`` / ``--qat``)
-----------------------------------------------------
``intB`` (B = 2..8; int8, int6 are the reported ones) -- Wu et al. 2020: every matmul on the INT
    unit, weights per output channel, inputs per tensor with calibrated ranges, Q.K^T and
    attention.V included, the vocabulary projection included.
``logB`` (B = 1..8) -- Aji & Heafield 2019: B-bit log weights (one scale per tensor, refined),
    embedding/output quantized, biases float, error feedback in retraining; inputs int8 (the
    shift unit needs integers), Q.K^T and attention.V on the INT unit in INT8.
``bmt1`` -- BMT (Zhang et al. 2023): 1-bit weights per output channel for Q/K/V/out and both FFN
    layers, with BMT's extra LayerNorms; Q.K^T and attention.V float (as in their code). Inputs
    of the binarized layers are 8-bit per token (the paper keeps them float; the XNOR unit takes
    them as 8 bit planes). The tied embedding/output matrix, float in BMT's code, is binary-coded
    with Chung et al.'s per-word planes (as in ``mixed``), its inputs 8-bit per token: that is
    what makes the model about 16x smaller than FP32 (BMT's claim).
``bmt1a1`` -- as bmt1 with 1-bit inputs per token (BMT's binarized activations) for the
    binarized layers; the output layer keeps 8-bit inputs.
``bmt1a1-nonorm`` -- bmt1a1 without BMT's extra LayerNorms and attention shortcut (the ablation
    of the paper's architecture change).

Packages and checkpoints made before the embedding of the BMT schemes was quantized record no
``embedding`` option (``config.extra["qat"]``); :func:`get_scheme` rebuilds them with a float
embedding and output layer, as they were made.
``mixed`` -- Chung et al. 2020: binary-coding weights, planes per block (encoder self-attn 3,
    encoder FFN 4, decoder self-attn 2, encoder-decoder attn 3, decoder FFN 1); the tied
    embedding/output matrix with 4/3/2/1 planes per word from frequency clusters; inputs 8-bit
    per token; Q.K^T and attention.V float (the paper quantizes weights only).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from lowbit import LowbitError

from . import weights as W

BLOCKS = ("enc_self_attn", "enc_ffn", "dec_self_attn", "enc_dec_attn", "dec_ffn", "output")

# Chung et al.: bits per sub-layer (DESIGN.md) and per-word embedding bits by frequency cluster.
MIXED_BLOCK_PLANES = {"enc_self_attn": 3, "enc_ffn": 4, "dec_self_attn": 2, "enc_dec_attn": 3,
                      "dec_ffn": 1}
MIXED_WORD_PLANES = (4, 3, 2, 1)   # most frequent cluster first
MIXED_RATIO = 4.0                  # cluster sizes 1 : r : r^2 : r^3 (Chung's r; 1.32 bits at r=4)

REPORTED = ("int8", "int6", "log4", "log3", "log2", "log1", "bmt1", "bmt1a1", "mixed")
BMT_SCHEMES = ("bmt1", "bmt1a1", "bmt1a1-nonorm")


def block_of(name: str) -> str | None:
    """The block of a Linear/MatMul module path (None for modules outside every block)."""
    if name == "lm_head":
        return "output"
    m = re.match(r"model\.(encoder|decoder)\.layers\.\d+\.(self_attn|encoder_attn|fc1|fc2)\b", name)
    if not m:
        return None
    side, part = m.groups()
    if part in ("fc1", "fc2"):
        return "enc_ffn" if side == "encoder" else "dec_ffn"
    if side == "encoder":
        return "enc_self_attn"
    return "dec_self_attn" if part == "self_attn" else "enc_dec_attn"


def group_of(name: str) -> str:
    """QAT phase group: ``embedding`` (the tied output matrix), ``encoder`` or ``decoder``."""
    if name in ("lm_head", "model.shared"):
        return "embedding"
    return "encoder" if name.startswith("model.encoder") else "decoder"


@dataclass(frozen=True)
class LinearSpec:
    """How one ``nn.Linear`` is quantized.

    unit : ``int`` | ``log`` | ``xnor``.
    weights : ``int`` (per-channel symmetric), ``log`` (Aji & Heafield), ``binary`` (Chung's
        greedy coding with ``w_bits`` planes), ``bmt`` (BMT's +-max/2), ``rows`` (per-row planes).
    w_bits : weight bits (int, log) or planes (binary; for rows the largest).
    act, a_bits : input quantizer kind (see :class:`~lowbit.sw.quant.modules.ActQuant`) and bits.
    """

    unit: str
    weights: str
    w_bits: int
    act: str
    a_bits: int
    refine_iters: int = 10

    def quantize(self, w, row_planes=None, log_scale: float | None = None, refine: int | None = None,
                 check: bool = True, row_groups=None):
        """Quantize ``w``. Log weights start from ``log_scale`` (default ``max|w|``) and refine
        it ``refine`` times (default ``refine_iters``). ``check=False`` skips the finiteness
        check (QAT's hot path); ``row_groups`` (:func:`~lowbit.sw.quant.weights.row_groups` of
        ``row_planes``) spares per-row weights reading the plane counts back to the host."""
        if self.weights == "int":
            return W.quantize_int(w, self.w_bits, check)
        if self.weights == "log":
            return W.quantize_log(w, self.w_bits, self.refine_iters if refine is None else refine,
                                  scale=log_scale, check=check)
        if self.weights == "binary":
            return W.quantize_binary(w, self.w_bits, check)
        if self.weights == "bmt":
            return W.quantize_bmt(w, check)
        if self.weights == "rows":
            if row_groups is None and (row_planes is None or int(row_planes.min()) < 1):
                raise LowbitError("per-word bit widths were never assigned (mixed and bmt "
                                  "schemes: run QAT or quantize with --data-dir)")
            return W.quantize_rows(w, row_planes, check, groups=row_groups)
        raise ValueError(f"unknown weight quantizer {self.weights!r}")

    def site_params(self) -> dict:
        if self.unit == "int":
            return {"a_bits": self.a_bits, "w_bits": self.w_bits}
        if self.unit == "log":
            return {"bits": self.w_bits, "a_bits": self.a_bits}
        return {"a_planes": self.a_bits, "w_planes": self.w_bits}


@dataclass(frozen=True)
class MatMulSpec:
    """Q.K^T / attention.V on the INT unit with ``bits``-bit operands."""

    bits: int


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    linears: dict                      # block -> LinearSpec (missing block: float)
    attention: MatMulSpec | None       # Q.K^T and attention.V (None: float)
    bmt_norms: bool = False
    error_feedback: bool = False
    phases: tuple = (("embedding", "encoder", "decoder"),)  # groups switched on per phase
    options: dict = field(default_factory=dict)

    def linear_spec(self, block: str | None) -> LinearSpec | None:
        return self.linears.get(block)

    @property
    def quantizes_output(self) -> bool:
        return "output" in self.linears


def _all_blocks(spec: LinearSpec) -> dict:
    return {b: spec for b in BLOCKS}


def get_scheme(name: str, recorded: dict | None = None) -> Scheme:
    """The scheme called ``name``; raises :class:`LowbitError` for unknown names.

    ``recorded`` is the ``config.extra["qat"]`` of a saved model (None for a new one): a BMT
    model saved without the ``embedding`` option was made with a float embedding and output
    layer and is rebuilt that way.
    """
    m = re.fullmatch(r"(int8|log[1-8])i", name or "")
    if m:  # integer-only: the matmuls of int8 / logB, every other operation on integers too
        base = get_scheme(m.group(1))
        return dataclasses.replace(
            base, name=name, options={**base.options, "integer_only": True},
            description=f"integer-only decode: {base.description}; softmax, LayerNorm, "
                        f"residual adds, embedding and scores in integers")
    m = re.fullmatch(r"(int|log)(\d)", name or "")
    if m and m.group(1) == "int" and 2 <= int(m.group(2)) <= 8:
        b = int(m.group(2))
        return Scheme(name, f"INT{b} weights and activations, every matmul (Wu et al. 2020)",
                      _all_blocks(LinearSpec("int", "int", b, "tensor", b)), MatMulSpec(b))
    if m and m.group(1) == "log" and 1 <= int(m.group(2)) <= 8:
        b = int(m.group(2))
        return Scheme(name, f"{b}-bit log weights, int8 activations (Aji & Heafield 2019)",
                      _all_blocks(LinearSpec("log", "log", b, "tensor", 8)), MatMulSpec(8),
                      error_feedback=True)
    if name == "fp32":
        return Scheme(name, "float32 reference (nothing quantized)", {}, None)
    if name in BMT_SCHEMES:
        if recorded is not None and not isinstance(recorded, dict):
            raise LowbitError(f"the recorded options of scheme {name} must be an object, not "
                              f"{type(recorded).__name__}")
        return _bmt_scheme(name, recorded)
    if name == "mixed":
        blocks = {b: LinearSpec("xnor", "binary", p, "token", 8) for b, p in MIXED_BLOCK_PLANES.items()}
        blocks["output"] = LinearSpec("xnor", "rows", max(MIXED_WORD_PLANES), "token", 8)
        scheme = Scheme(name, "binary-coding mixed precision (Chung et al. 2020)", blocks, None,
                        phases=(("embedding",), ("decoder",), ("encoder",)),
                        options={"word_planes": list(MIXED_WORD_PLANES), "ratio": MIXED_RATIO})
        if isinstance(recorded, dict) and "word_planes" in recorded:
            scheme = with_word_planes(scheme, recorded["word_planes"])
        return scheme
    raise LowbitError(f"unknown quantization scheme {name!r}; schemes: int2..int8, log1..log8, "
                      f"int8i, log1i..log8i (integer-only), "
                      f"{', '.join(BMT_SCHEMES)}, mixed, fp32")


def _bmt_scheme(name: str, recorded: dict | None) -> Scheme:
    """bmt1, bmt1a1, bmt1a1-nonorm (see the module docstring)."""
    a1 = name.startswith("bmt1a1")
    act, a_bits = ("sign", 1) if a1 else ("token", 8)
    spec = LinearSpec("xnor", "bmt", 1, act, a_bits)
    blocks = {b: spec for b in BLOCKS if b != "output"}
    what = "1-bit weights and activations" if a1 else "1-bit weights"
    norms = not name.endswith("-nonorm")
    options = {}
    if recorded is None or "embedding" in recorded:
        # Chung et al.'s per-word planes for the tied embedding/output matrix, as in `mixed`;
        # the output layer's inputs stay 8-bit (logits from 1-bit inputs are not BMT's).
        recorded = recorded or {}
        options = {"embedding": "rows",
                   "word_planes": check_word_planes(recorded.get("word_planes", MIXED_WORD_PLANES)),
                   "ratio": recorded.get("ratio", MIXED_RATIO)}
        blocks["output"] = LinearSpec("xnor", "rows", max(options["word_planes"]), "token", 8)
        what += ", binary-coded embedding"
    # Phase 0: float (with BMT's extra LayerNorms); then binarization switched on.
    return Scheme(name, f"BMT {what}{'' if norms else ', no extra LayerNorms'} "
                        f"(Zhang et al. 2023)", blocks, None, bmt_norms=norms,
                  phases=((), ("embedding", "encoder", "decoder")), options=options)


def check_word_planes(planes) -> list:
    """``planes`` (plane counts of the frequency clusters, most frequent first) as a list, or
    :class:`LowbitError`: each count 1..8 (the XNOR unit's weight planes), none larger than the
    one before (a rarer word never gets more planes than a more frequent one)."""
    if (not isinstance(planes, (list, tuple)) or not planes
            or any(isinstance(p, bool) or not isinstance(p, int) for p in planes)):
        raise LowbitError(f"Word planes must be a non-empty list of integers, not {planes!r}")
    if any(not 1 <= p <= 8 for p in planes):
        raise LowbitError(f"Word planes must each be in 1..8, not {list(planes)}")
    if any(b > a for a, b in zip(planes, planes[1:])):
        raise LowbitError(f"Word planes must not increase from the most frequent cluster to the "
                          f"rarest, not {list(planes)}")
    return list(planes)


def with_word_planes(scheme: Scheme, planes) -> Scheme:
    """``scheme`` with Chung et al.'s per-word plane counts ``planes`` for the clusters of its
    tied embedding/output matrix (most frequent first; cluster sizes stay ``1 : r : r^2 ...``).
    The output layer's XNOR unit gets ``max(planes)`` weight planes. Only schemes that code the
    embedding per word (``mixed``, ``bmt*`` with the binary-coded embedding) take them."""
    spec = scheme.linear_spec("output")
    if spec is None or spec.weights != "rows":
        raise LowbitError(f"scheme {scheme.name} does not code the embedding with per-word planes; "
                          f"word planes apply to mixed and the BMT schemes")
    planes = check_word_planes(planes)
    linears = dict(scheme.linears, output=dataclasses.replace(spec, w_bits=max(planes)))
    return dataclasses.replace(scheme, linears=linears,
                               options={**scheme.options, "word_planes": planes})


def word_cluster_planes(counts, ratio: float = MIXED_RATIO, planes=MIXED_WORD_PLANES):
    """Planes per word: words sorted by ``counts`` (descending, ties by id) fill clusters of
    sizes proportional to ``1 : r : r^2 : ...``, which get ``planes[0], planes[1], ...``.

    Returns an int64 tensor like ``counts``.
    """
    import torch

    counts = torch.as_tensor(counts, dtype=torch.float64)
    n = counts.numel()
    order = sorted(range(n), key=lambda i: (-float(counts[i]), i))
    weights = [ratio ** j for j in range(len(planes))]
    total = sum(weights)
    out = torch.empty(n, dtype=torch.int64)
    start = 0
    for j, p in enumerate(planes):
        end = n if j == len(planes) - 1 else start + round(n * weights[j] / total)
        for i in order[start:end]:
            out[i] = p
        start = end
    return out
