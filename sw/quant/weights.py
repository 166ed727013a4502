"""Weight quantizers and the integer form of a quantized weight matrix.

A quantizer turns a float matrix ``W [N, K]`` (``nn.Linear`` layout) into one of the integer
representations below; each knows its real value (:meth:`dequantize`), the per-output-channel
factor that turns the golden kernel's accumulator back into real units (:meth:`channel_scale`),
and its storage cost in bits. The quantization itself is done by the golden quantizers of
:mod:`lowbit.sw.golden` (``quantize_symmetric``, ``log_quantize``, ``binary_code``,
``quantize_alpha``); this module only arranges their results.

==============  ===========================================  ===================================
representation  real weight                                  unit / golden kernel
==============  ===========================================  ===================================
IntWeights      ``values[n, k] * scale[n]``                  INT unit, ``int_matmul``
LogWeights      ``S * 2**-(D-1) * (+-2**(D-1-e))``           log unit, ``log_matmul``
BinaryWeights   ``scale[n] * sum_i alpha[i, n] * b[i, n, k]``  XNOR unit, ``xnor_matmul``
RowGroups       rows grouped by bit width, each a BinaryWeights  XNOR unit, one call per group
==============  ===========================================  ===================================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy
import torch

from lowbit.sw import golden


def _check_matrix(w: torch.Tensor, check: bool = True) -> torch.Tensor:
    """``w`` as float64; ``check`` also rejects non-finite values (a device sync, which QAT skips
    on its hot path: a non-finite weight there shows up as a non-finite loss)."""
    if w.dim() != 2:
        raise ValueError(f"weights must be a matrix [N, K], not {tuple(w.shape)}")
    w = w.detach().to(torch.float64)
    if check and not bool(torch.isfinite(w).all()):
        raise ValueError("cannot quantize weights with non-finite values")
    return w


# ---------------------------------------------------------------------------------------------
# Representations


@dataclass
class IntWeights:
    """Symmetric per-output-channel integers: ``w ~ values * scale[:, None]``."""

    values: torch.Tensor   # int64 [N, K], signed `bits`
    scale: torch.Tensor    # float64 [N]
    bits: int
    unit = "int"

    def dequantize(self) -> torch.Tensor:
        return self.values.to(torch.float64) * self.scale[:, None]

    def channel_scale(self) -> torch.Tensor:
        return self.scale

    @property
    def shape(self):
        return tuple(self.values.shape)

    def code_bits(self) -> int:
        """Bits of the weight codes alone (what 'bits per weight' counts)."""
        return self.values.numel() * self.bits


@dataclass
class LogWeights:
    """Aji & Heafield log codes (sign + exponent index) with one scale ``S`` per tensor."""

    codes: torch.Tensor    # int64 [N, K], `bits`-bit codes
    log_scale: float       # S, the largest magnitude
    bits: int
    unit = "log"

    @property
    def step(self) -> float:
        """Real value of integer weight 1: ``S * 2**-(D-1)``."""
        return self.log_scale * 2.0 ** (1 - golden.log_depth(self.bits))

    def integer_weights(self) -> torch.Tensor:
        # Unchecked: the codes come from quantize_log or were validated by the packed reader,
        # and this runs in every QAT forward and error-feedback step (the checks are device
        # syncs). The golden log_matmul checks its operands itself.
        return golden.log_weight_values(self.codes, self.bits, check=False)

    def dequantize(self) -> torch.Tensor:
        return self.integer_weights().to(torch.float64) * self.step

    def channel_scale(self) -> torch.Tensor:
        return torch.full((self.codes.shape[0],), self.step, dtype=torch.float64,
                          device=self.codes.device)

    @property
    def shape(self):
        return tuple(self.codes.shape)

    def code_bits(self) -> int:
        return self.codes.numel() * self.bits


@dataclass
class BinaryWeights:
    """Binary coding ``w[n] ~ scale[n] * sum_i alpha[i, n] * b[i, n]`` with integer ``alpha``."""

    signs: torch.Tensor    # int64 [P, N, K] of +-1
    alpha: torch.Tensor    # int64 [P, N], unsigned golden.ALPHA_BITS
    scale: torch.Tensor    # float64 [N]
    unit = "xnor"

    @property
    def planes(self) -> int:
        return self.signs.shape[0]

    def integer_weights(self) -> torch.Tensor:
        """``sum_i alpha[i, n] * b[i, n, k]`` (int64 [N, K])."""
        return (self.signs * self.alpha[:, :, None]).sum(0)

    def dequantize(self) -> torch.Tensor:
        return self.integer_weights().to(torch.float64) * self.scale[:, None]

    def channel_scale(self) -> torch.Tensor:
        return self.scale

    @property
    def shape(self):
        return tuple(self.signs.shape[1:])

    def code_bits(self) -> int:
        return self.signs.numel()


@dataclass
class RowGroups:
    """Rows quantized with different numbers of bit planes (Chung et al.'s per-word embedding).

    ``groups[j] = (rows, BinaryWeights)``: ``rows`` (int64) are the row indices coded with that
    group's planes, in increasing order; every row is in exactly one group.
    """

    groups: list
    n_rows: int
    n_cols: int
    unit = "xnor"

    def dequantize(self) -> torch.Tensor:
        dev = self.groups[0][1].signs.device
        out = torch.zeros(self.n_rows, self.n_cols, dtype=torch.float64, device=dev)
        for rows, part in self.groups:
            out[rows] = part.dequantize()
        return out

    def channel_scale(self) -> torch.Tensor:
        dev = self.groups[0][1].signs.device
        out = torch.zeros(self.n_rows, dtype=torch.float64, device=dev)
        for rows, part in self.groups:
            out[rows] = part.scale
        return out

    @property
    def shape(self):
        return (self.n_rows, self.n_cols)

    def code_bits(self) -> int:
        return sum(part.code_bits() for _, part in self.groups)


# ---------------------------------------------------------------------------------------------
# Quantizers (the arithmetic is the golden one)


def quantize_int(w: torch.Tensor, bits: int, check: bool = True) -> IntWeights:
    """Per-output-channel symmetric integers, ``scale[n] = max|w[n]| / (2**(bits-1) - 1)``.

    The range is symmetric (``-2**(bits-1)`` is never produced), as in Wu et al.; an all-zero
    row gets scale 1.
    """
    w = _check_matrix(w, check)
    qmax = (1 << (bits - 1)) - 1
    scale = _f32(w.abs().amax(1) / qmax)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return IntWeights(golden.quantize_symmetric(w, scale[:, None], bits), scale, bits)


def quantize_log(w: torch.Tensor, bits: int, refine_iters: int = 10,
                 scale: float | None = None, check: bool = True) -> LogWeights:
    """Aji & Heafield's log quantizer (``golden.log_quantize``) with scale refinement.

    ``S`` starts at ``scale`` (default ``max|w|``) and is refined ``refine_iters`` times; it is
    then rounded to float32, the precision a packed model stores, and the codes are those of
    the rounded scale (so a packed model reproduces them exactly).
    """
    w = _check_matrix(w, check)
    if refine_iters == 0 and scale is not None:
        s = _f32(scale)
    else:
        _, s = golden.log_quantize(w, bits, refine_iters=refine_iters, scale=scale, check=False)
        s = _f32(s)
    codes, _ = golden.log_quantize(w, bits, scale=s, check=False)  # checked above when asked
    return LogWeights(codes, s, bits)


def _f32(x):
    """Round a float (or float tensor) to float32 precision, kept as float64."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.float32).to(torch.float64)
    return float(numpy.float32(x))  # no tensor: QAT's hot path reads no tensor scalars


def quantize_binary(w: torch.Tensor, planes: int, check: bool = True) -> BinaryWeights:
    """Chung et al.'s greedy binary coding with integer plane scales (``quantize_alpha``)."""
    w = _check_matrix(w, check)
    signs, alpha = golden.binary_code(w, planes)
    alpha_int, scale = golden.quantize_alpha(alpha)
    return BinaryWeights(signs, alpha_int, _f32(scale))


def quantize_bmt(w: torch.Tensor, check: bool = True) -> BinaryWeights:
    """BMT's weight binarizer: per output channel ``+-max|w[n]| / 2`` (zero maps to +).

    One plane with ``alpha = 1`` and ``scale[n] = max|w[n]| / 2`` (docs/numerics.md).
    """
    w = _check_matrix(w, check)
    signs, _ = golden.binary_code(w, 1)
    alpha = torch.ones(1, w.shape[0], dtype=torch.int64, device=w.device)
    return BinaryWeights(signs, alpha, _f32(w.abs().amax(1) / 2))


def row_groups(row_planes: torch.Tensor) -> list:
    """``[(planes, rows)]`` of per-row plane counts, most planes first (``rows``: int64 indices in
    increasing order). Reads the counts back to the host; QAT caches the result."""
    return [(int(p), torch.nonzero(row_planes == p).flatten())
            for p in sorted(set(row_planes.tolist()), reverse=True)]


def quantize_rows(w: torch.Tensor, row_planes: torch.Tensor, check: bool = True,
                  groups: list | None = None) -> RowGroups:
    """Binary coding with ``row_planes[n]`` planes for row ``n`` (one group per plane count).

    ``groups`` is :func:`row_groups` of ``row_planes`` when the caller has it already.
    """
    w = _check_matrix(w, check)
    row_planes = row_planes.to(w.device)
    if row_planes.shape != (w.shape[0],):
        raise ValueError(f"row_planes must be [N] = [{w.shape[0]}], not {tuple(row_planes.shape)}")
    if groups is None:
        groups = row_groups(row_planes)
    parts = [(rows.to(w.device), quantize_binary(w[rows.to(w.device)], p, check=False))
             for p, rows in groups]
    return RowGroups(parts, w.shape[0], w.shape[1])
