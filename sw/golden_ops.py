"""Bit-exact golden operations between the matmuls: the integer-only decode of docs/numerics.md.

The matmul kernels and the requantizer live in :mod:`lowbit.sw.golden`; this module holds every
other operation of an integer-only decode, each a pure function of integer tensors:

=====================  ==========================================================================
operation              function
=====================  ==========================================================================
embedding lookup       :func:`embedding` (integer table, per-row requantization, position table)
residual add           :func:`residual_add` (two requantized terms, saturating sum)
ReLU                   ``golden.requantize(..., relu=True)`` (the requantizer's ReLU option)
softmax                :func:`softmax` (base-2 exponential from a 256-entry table, one
                       reciprocal per row)
LayerNorm              :func:`layernorm` (exact mean and variance, :func:`isqrt`, one
                       reciprocal per row)
output scores          ``golden.requantize`` into the log2 domain, :func:`argmax` (greedy),
                       :func:`log_softmax` (beam search, with :func:`log2_fixed`)
=====================  ==========================================================================

and the functions that turn a float model's parameters into their integer constants
(:func:`layernorm_params`, :func:`position_table`, :func:`log2_domain_scale`), as
``golden.requant_params`` does for the requantizer.

Every function uses int64 tensor operations only (shifts, integer products and sums, floor
division, comparisons, table look-ups), so CPU and CUDA return the same integers; the widths
in the docstrings bound every intermediate value below 2**63. By default each function checks
its operands' ranges (a device sync each); ``check=False`` skips those checks for callers whose
operands have the declared widths by construction (quantization-aware training).
"""

from __future__ import annotations

import math

import torch

from lowbit.contract import (EXP2_TABLE, EXP_INDEX_BITS, EXP_ONE_BITS, LN_BETA_BITS, LN_EPS_MAX,
                             LN_GAMMA_BITS, LN_MAX_D, LN_NORM_BITS, LN_RECIP_BITS, LN_SHIFT_MAX,
                             LN_SQRT_SHIFT, MAX_ROW, SOFTMAX_FRAC_BITS, SOFTMAX_RECIP_BITS,
                             check_bits)
from lowbit.sw import golden

# ---------------------------------------------------------------------------------------------
# Widths and limits (docs/numerics.md, "Integer-only decode")

SCORE_FRAC_BITS = 16      # output scores: log2-domain fixed point, 2**-16, signed 32-bit
SCORE_BITS = 32
LOG2_E = 1.4426950408889634   # 1 / ln 2 (the float64 nearest), for compile-time scales only


_TABLES: dict = {}


def exp2_table(device=None) -> torch.Tensor:
    """The exponential table as an int64 tensor [256] on ``device`` (made once per device: a
    copy from the host per call would wait for the device)."""
    key = torch.device(device or "cpu")
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = torch.tensor(EXP2_TABLE, dtype=torch.int64, device=key)
    return table


def _check(name: str, t: torch.Tensor, bits: int, check: bool) -> torch.Tensor:
    return golden.check_signed(name, t, bits) if check else golden.as_int(name, t)


# ---------------------------------------------------------------------------------------------
# Integer helpers


def bit_length(v: torch.Tensor) -> torch.Tensor:
    """Bits needed for each non-negative int64 ``v`` (0 for 0), by binary search of shifts."""
    n = torch.zeros_like(v)
    for s in (32, 16, 8, 4, 2, 1):
        n = torch.where((v >> (n + s)) != 0, n + s, n)
    return torch.where(v > 0, n + 1, n)


def isqrt(v: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """``floor(sqrt(v))`` of each non-negative int64 ``v < 2**63``, exactly.

    Newton's iteration ``x <- (x + v // x) // 2`` from ``x = 2**ceil(bits(v)/2)`` (at or above
    the root) decreases monotonically to the root; six steps reach it for every 63-bit value
    (five at most are needed), and ``min`` keeps the root once it is reached.
    """
    v = golden.as_int("isqrt operand", v)
    if check and v.numel() and int(v.min()) < 0:
        raise ValueError(f"isqrt operand must be non-negative, not {int(v.min())}")
    x = torch.ones_like(v) << ((bit_length(v) + 1) >> 1)
    for _ in range(6):
        x = torch.minimum(x, (x + torch.div(v, x.clamp(min=1), rounding_mode="floor")) >> 1)
    return x


def log2_fixed(s: torch.Tensor, frac_bits: int = SCORE_FRAC_BITS, *,
               check: bool = True) -> torch.Tensor:
    """``log2(s)`` in fixed point with ``frac_bits`` fraction bits, for ``1 <= s < 2**31``.

    The integer part is ``k = bits(s) - 1``; the fraction comes one bit per step from the
    mantissa ``m = s * 2**(30-k)`` in [2**30, 2**31) (30 fraction bits): ``m <- m*m >> 30``,
    and a result of 2 or more gives bit 1 and ``m <- m >> 1``. Truncating ``m*m`` makes the
    result at most the true value and at most ``frac_bits`` units of the last place below it.
    """
    check_bits("frac_bits", frac_bits, 0, 30)
    s = golden.as_int("log2 operand", s)
    if check and s.numel() and (int(s.min()) < 1 or int(s.max()) >= 1 << 31):
        raise ValueError(f"log2 operand must lie in 1..2**31-1 (min {int(s.min())}, "
                         f"max {int(s.max())})")
    k = bit_length(s) - 1
    m = s << (30 - k)
    frac = torch.zeros_like(s)
    for _ in range(frac_bits):
        m = (m * m) >> 30
        bit = m >> 31                                 # 1 when the square reached 2
        m = m >> bit
        frac = (frac << 1) | bit
    return (k << frac_bits) | frac


# ---------------------------------------------------------------------------------------------
# Softmax: base-2 exponential from a table, one reciprocal per row


def exp2_neg(d: torch.Tensor, frac_bits: int = SOFTMAX_FRAC_BITS) -> torch.Tensor:
    """``2**15 * 2**(-d / 2**frac_bits)`` for non-negative fixed-point ``d``, from the table.

    Integer part ``q = d >> F``, table index the 8 fraction bits below it
    (``r = (d >> (F-8)) & 255``; for F < 8 the fraction shifted up); result
    ``E[r] >> min(q, 16)`` (0 from q = 16 on: every entry is below 2**16).
    """
    check_bits("frac_bits", frac_bits, 0, 30)
    q = d >> frac_bits
    if frac_bits >= EXP_INDEX_BITS:
        r = (d >> (frac_bits - EXP_INDEX_BITS)) & 255
    else:
        r = (d << (EXP_INDEX_BITS - frac_bits)) & 255
    table = exp2_table(d.device)
    return table[r] >> q.clamp(max=16)


def softmax(z: torch.Tensor, mask: torch.Tensor | None = None, *,
            frac_bits: int = SOFTMAX_FRAC_BITS, out_bits: int = 8,
            check: bool = True) -> torch.Tensor:
    """Integer softmax over the last dimension (the attention probabilities).

    Parameters
    ----------
    z : int tensor [..., L], signed 32-bit scores in the log2 domain with ``frac_bits`` fraction
        bits (``z = score * log2(e) * 2**frac_bits``; the attention requantizes into 16 bits).
    mask : bool tensor broadcasting to ``z``, True where a position is excluded, or None.
    out_bits : the probabilities are unsigned ``out_bits - 1``-bit values at scale
        ``1 / (2**(out_bits-1) - 1)`` (INT8: 0..127, 127 = 1.0), the signed operand of the INT unit.

    Per row: ``m = max z`` over the kept positions; ``d = m - z``; ``e = exp2_neg(d)``
    (0 at excluded positions); ``S = sum e`` (``2**15 <= S < 2**31`` for L <= 2**16);
    ``R = floor((2**(ob-1) - 1) * 2**31 / S)`` (23 bits for INT8);
    ``p = (e * R + 2**30) >> 31`` (product < 2**38, round half up). A row whose every position
    is excluded gives all zeros.
    """
    check_bits("out_bits", out_bits, 2, 16)
    z = _check("softmax scores", z, 32, check)
    if z.dim() < 1 or not 1 <= z.shape[-1] <= MAX_ROW:
        raise ValueError(f"softmax rows must have 1..{MAX_ROW} elements, not shape {tuple(z.shape)}")
    keep = torch.ones_like(z, dtype=torch.bool) if mask is None else ~mask.to(z.device).expand(z.shape)
    floor_value = -(1 << 40)                          # below every 32-bit score
    m = torch.where(keep, z, torch.full_like(z, floor_value)).amax(-1, keepdim=True)
    d = torch.where(keep, m - z, torch.zeros_like(z))
    e = torch.where(keep, exp2_neg(d, frac_bits), torch.zeros_like(z))
    s = e.sum(-1, keepdim=True)
    top = (1 << (out_bits - 1)) - 1
    r = torch.div(torch.full_like(s, top << SOFTMAX_RECIP_BITS), s.clamp(min=1),
                  rounding_mode="floor")
    p = (e * r + (1 << (SOFTMAX_RECIP_BITS - 1))) >> SOFTMAX_RECIP_BITS
    return torch.where(s > 0, p, torch.zeros_like(p))


def log_softmax(z: torch.Tensor, frac_bits: int = SCORE_FRAC_BITS, *,
                check: bool = True) -> torch.Tensor:
    """Integer log-probabilities of scores ``z`` [..., V] (log2 domain, ``frac_bits`` bits).

    ``m = max z``; ``d = m - z``; ``S = sum exp2_neg(d)`` (at least 2**15, below 2**31 for
    V <= 2**16); ``l = log2_fixed(S) - 15 * 2**frac_bits`` (``log2`` of the row's normalizer
    relative to its largest term, >= 0); log-probability ``-d - l`` (<= 0), same units as ``z``.
    """
    z = _check("scores", z, SCORE_BITS, check)
    if z.dim() < 1 or not 1 <= z.shape[-1] <= MAX_ROW:
        raise ValueError(f"score rows must have 1..{MAX_ROW} elements, not shape {tuple(z.shape)}")
    d, lse = log_softmax_terms(z, frac_bits)
    return -d - lse


def log_softmax_terms(z: torch.Tensor, frac_bits: int = SCORE_FRAC_BITS, *,
                      sparse: bool = False):
    """``(d, l)`` of :func:`log_softmax` (``log_softmax(z) == -d - l``), operands unchecked.

    ``d = max z - z`` [..., V] and ``l`` [..., 1]. With ``sparse`` the row sum ``S`` adds only
    the terms with ``d < 2**(F+4)``: from ``d >> F = 16`` on, :func:`exp2_neg` is 0 (every
    table entry is below 2**16), so ``S`` is the same integer, from far fewer table look-ups
    when most of a row lies more than 16 (log2 units) below its maximum, as a vocabulary's
    scores do.
    """
    d = z.amax(-1, keepdim=True) - z
    if sparse:
        flat = d.view(-1, d.shape[-1])
        rows, cols = torch.nonzero(flat < (16 << frac_bits), as_tuple=True)
        s = torch.zeros(flat.shape[0], dtype=torch.int64, device=d.device).index_add_(
            0, rows, exp2_neg(flat[rows, cols], frac_bits)).view(*d.shape[:-1], 1)
    else:
        s = exp2_neg(d, frac_bits).sum(-1, keepdim=True)
    lse = log2_fixed(s, frac_bits, check=False) - (EXP_ONE_BITS << frac_bits)
    return d, lse


def argmax(z: torch.Tensor, *, check: bool = True) -> torch.Tensor:
    """Index of the largest element of each row of ``z`` [..., V]; ties go to the lowest index."""
    z = golden.as_int("scores", z)
    if check and (z.dim() < 1 or z.shape[-1] < 1):
        raise ValueError(f"argmax needs rows of at least one element, not shape {tuple(z.shape)}")
    n = z.shape[-1]
    idx = torch.arange(n, dtype=torch.int64, device=z.device).expand(z.shape)
    best = z.amax(-1, keepdim=True)
    return torch.where(z == best, idx, torch.full_like(idx, n)).amin(-1)


# ---------------------------------------------------------------------------------------------
# LayerNorm: exact mean and variance, integer square root, one reciprocal per row


def layernorm(t: torch.Tensor, g: torch.Tensor, b: torch.Tensor, shift, eps=0, *,
              in_bits: int = 16, out_bits: int = 8, check: bool = True) -> torch.Tensor:
    """Integer LayerNorm over the last dimension (D elements), affine, requantized.

    Parameters
    ----------
    t : int tensor [..., D], signed ``in_bits`` (<= 16), 1 <= D <= 4096.
    g, b : int tensors [D]: signed 16-bit gain and signed 48-bit offset (:func:`layernorm_params`).
    shift : output shift ``S`` in 0..47 (int or 0-dim tensor).
    eps : the integer epsilon added to the sum of squares, 0..2**44 (int or 0-dim tensor).

    Per row: ``mu = floor((sum t + floor(D/2)) / D)`` (mean rounded half up); ``c = t - mu``
    (``|c| < 2**16``); ``V = sum c*c + eps`` (< 2**45); ``sigma = isqrt(V << 18)`` (< 2**32);
    ``inv = floor(2**40 / sigma)`` (``inv = 0`` when ``V = 0``); ``n = c * inv`` (``|n| < 2**32``:
    ``|c| <= sqrt(V)``); ``y = (n * g + b + 2**(S-1)) >> S`` (round half up, nothing added for
    S = 0; ``|n*g + b| < 2**48``); saturated to signed ``out_bits``. ``n`` is the normalized
    value times ``2**31 / sqrt(D)``, so a zero-variance row gives ``y = round(b / 2**S)``.
    """
    check_bits("in_bits", in_bits, 2, 16)
    check_bits("out_bits", out_bits, 2, 32)
    t = _check("LayerNorm input", t, in_bits, check)
    d = t.shape[-1]
    if not 1 <= d <= LN_MAX_D:
        raise ValueError(f"LayerNorm rows must have 1..{LN_MAX_D} elements, not {d}")
    g = _check("LayerNorm gain", g, LN_GAMMA_BITS, check).to(t.device)
    b = _check("LayerNorm offset", b, LN_BETA_BITS, check).to(t.device)
    if check and (g.shape != (d,) or b.shape != (d,)):
        raise ValueError(f"LayerNorm gain and offset must be [D] with D={d}, "
                         f"not {tuple(g.shape)} and {tuple(b.shape)}")
    shift = torch.as_tensor(shift, dtype=torch.int64, device=t.device)
    eps = torch.as_tensor(eps, dtype=torch.int64, device=t.device)
    if check:
        golden.check_range("LayerNorm shift", shift, 0, LN_SHIFT_MAX)
        golden.check_range("LayerNorm epsilon", eps, 0, LN_EPS_MAX)
    mu = torch.div(t.sum(-1, keepdim=True) + d // 2, d, rounding_mode="floor")
    c = t - mu
    v = (c * c).sum(-1, keepdim=True) + eps
    sigma = isqrt(v << LN_SQRT_SHIFT, check=False)
    inv = torch.div(torch.full_like(sigma, 1 << LN_RECIP_BITS), sigma.clamp(min=1),
                    rounding_mode="floor")
    inv = torch.where(sigma > 0, inv, torch.zeros_like(inv))
    rnd = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0),
                      torch.zeros_like(shift))
    y = (c * inv * g + b + rnd) >> shift
    lo, hi = golden.int_range(out_bits)
    return y.clamp(lo, hi)


def layernorm_params(gamma: torch.Tensor, beta: torch.Tensor, s_in, s_out, eps: float):
    """Integer constants of a LayerNorm with input scale ``s_in`` and output scale ``s_out``.

    ``gamma``, ``beta`` [D] are the float affine parameters, ``eps`` the float epsilon. With
    ``a = max|gamma| * sqrt(D) / s_out``: ``S`` is the largest shift in 0..47 with
    ``a * 2**(S-31) <= 2**15 - 1``; ``g = round(gamma * (sqrt(D) / s_out) * 2**(S-31))``,
    ``b = round(beta / s_out * 2**S)`` clamped to 48 bits, ``eps_int = round(eps * D / s_in**2)``
    clamped to 0..2**44 (rounding half to even; float64, every step correctly rounded, so the
    constants are the same on every device). Scales may be floats or 0-dim tensors.

    Returns ``(g int64 [D], b int64 [D], S int64 0-dim, eps_int int64 0-dim)`` on gamma's device.
    """
    gamma = gamma.detach().to(torch.float64)
    beta = beta.detach().to(torch.float64)
    dev = gamma.device
    d = gamma.shape[-1]
    s_in = torch.as_tensor(s_in, dtype=torch.float64, device=dev)
    s_out = torch.as_tensor(s_out, dtype=torch.float64, device=dev)
    unit = math.sqrt(d) / s_out                        # math.sqrt is correctly rounded
    a = gamma.abs().amax() * unit
    top = float((1 << (LN_GAMMA_BITS - 1)) - 1)
    _, e = torch.frexp(top / a.clamp(min=1e-300))      # top / a = m * 2**e, m in [0.5, 1)
    shift = (e.to(torch.int64) - 1 + LN_NORM_BITS).clamp(0, LN_SHIFT_MAX)
    g = torch.round(torch.ldexp(gamma * unit, shift - LN_NORM_BITS))
    b_lim = float((1 << (LN_BETA_BITS - 1)) - 1)
    b = torch.round(torch.ldexp(beta / s_out, shift)).clamp(-b_lim, b_lim)
    eps_int = torch.round(eps * d / (s_in * s_in)).clamp(0, float(LN_EPS_MAX))
    return g.to(torch.int64), b.to(torch.int64), shift, eps_int.to(torch.int64)


# ---------------------------------------------------------------------------------------------
# Embedding lookup and residual add


def embedding(ids: torch.Tensor, table: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor,
              positions: torch.Tensor, offset: int = 0, *, out_bits: int = 8,
              check: bool = True) -> torch.Tensor:
    """Token embedding plus position, integer: ``[B, L]`` ids -> ``[B, L, D]``.

    ``x = sat(requantize(table[id], mult[id], shift[id], out_bits+1) + positions[offset + l])``:
    the row of the (integer, per-row scaled) embedding table is requantized with its row's
    multiplier and shift into the output scale (round half up, saturated to ``out_bits + 1``
    bits), the integer position row (signed ``out_bits``, same scale) is added, and the sum is
    saturated to signed ``out_bits``.
    """
    ids = golden.as_int("token ids", ids)
    n_pos = positions.shape[0]
    if offset < 0 or offset + ids.shape[-1] > n_pos:
        raise ValueError(f"positions {offset}..{offset + ids.shape[-1] - 1} are outside the "
                         f"position table (0..{n_pos - 1})")
    if check:
        golden.check_range("token ids", ids, 0, table.shape[0] - 1)
        _check("position table", positions, out_bits, True)
    flat = ids.reshape(-1)
    rows = table.index_select(0, flat)
    m = mult.index_select(0, flat)[:, None]
    s = shift.index_select(0, flat)[:, None]
    x = golden.requantize(rows, m, s, out_bits=out_bits + 1, check=check)
    x = x.view(*ids.shape, table.shape[1]) + positions[offset:offset + ids.shape[-1]]
    lo, hi = golden.int_range(out_bits)
    return x.clamp(lo, hi)


def position_table(positions: torch.Tensor, scale, out_bits: int = 8) -> torch.Tensor:
    """Integer position table: ``clamp(round_half_even(P / scale), signed out_bits)``."""
    return golden.quantize_symmetric(positions.to(torch.float64),
                                     torch.as_tensor(scale, dtype=torch.float64,
                                                     device=positions.device), out_bits)


def residual_add(a: torch.Tensor, mult_a, shift_a, b: torch.Tensor, mult_b, shift_b, *,
                 out_bits: int = 16, check: bool = True) -> torch.Tensor:
    """``sat(requantize(a) + requantize(b))``: two tensors of different scales summed at a third.

    Each term is requantized with its own multiplier and shift (per tensor: 0-dim; per channel:
    [N]) into the sum's scale, round half up, saturated to ``out_bits + 1`` bits; their sum
    (``out_bits + 2`` bits) is saturated to signed ``out_bits``.
    """
    check_bits("out_bits", out_bits, 2, 31)
    ra = golden.requantize(a, mult_a, shift_a, out_bits=out_bits + 1, check=check)
    rb = golden.requantize(b, mult_b, shift_b, out_bits=out_bits + 1, check=check)
    lo, hi = golden.int_range(out_bits)
    return (ra + rb).clamp(lo, hi)


def log2_domain_scale(scale, frac_bits: int):
    """Real scale -> requantization scale into the log2 domain: ``scale * log2(e) * 2**F``.

    A score ``x = acc * scale`` (natural units) is ``acc * scale * log2(e) * 2**F`` units of
    ``2**-F`` in base 2; ``golden.requant_params`` turns the result into a multiplier and shift.
    """
    return torch.as_tensor(scale, dtype=torch.float64) * LOG2_E * float(1 << frac_bits)

