"""Bit-exact golden kernels: the integer arithmetic of docs/numerics.md, in PyTorch.

This module and the RTL in hw/ are the only two implementations of the contract. Everything
else (quantization-aware training, packers, decoding, co-simulation) calls these functions.

Conventions
-----------
* Integer tensors are ``torch.int64`` on any device; values are checked against their declared
  widths and a violation raises :class:`ValueError` naming the operand.
* Weights use ``nn.Linear``'s layout ``[N, K]`` (output channel major); activations are
  ``[..., M, K]``; results are ``[..., M, N]``. Per-output-channel vectors are ``[N]``.
* Exact sums are computed as float64 matrix products. That is exact because every operand and
  every partial sum is an integer of magnitude below 2**53 (checked by :func:`_exact_matmul`), so
  the result does not depend on summation order: CPU and CUDA give identical integers.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time

import torch

# Widths and limits (docs/numerics.md, "Common rules"): torch-free, shared with the RTL
from lowbit.contract import (  # noqa: E402,F401  (re-exported: the golden API names them)
    ACC_MAX_BITS, ALPHA_BITS, DEFAULT_MAX_K, LOG_MAX_DEPTH, MULT_BITS, SHIFT_MAX, WORD_BITS,
    accumulator_width, bias_bound, int_acc_width, int_max_product, int_range, log_acc_width,
    log_depth, log_max_product, signed_width, xnor_acc_width, xnor_max_product,
)
from lowbit.contract import EXACT_LIMIT as _EXACT_LIMIT  # noqa: E402
from lowbit.contract import check_bits as _check_bits  # noqa: E402


def as_int(name: str, t: torch.Tensor) -> torch.Tensor:
    """``t`` as int64; TypeError naming ``name`` if it is not an integer tensor (no range
    check: :func:`check_range` adds one)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, not {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, not {t.dtype}")
    return t.to(torch.int64)


def check_range(name: str, t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Return ``t`` as int64 after checking ``lo <= t <= hi`` elementwise."""
    t = as_int(name, t)
    if t.numel() and (int(t.min()) < lo or int(t.max()) > hi):
        raise ValueError(f"{name} has values outside {lo}..{hi} "
                         f"(min {int(t.min())}, max {int(t.max())})")
    return t


def check_signed(name: str, t: torch.Tensor, bits: int) -> torch.Tensor:
    """Return ``t`` as int64 after checking it fits a ``bits``-wide signed integer."""
    return check_range(name, t, *int_range(bits))


# ---------------------------------------------------------------------------------------------
# Exact integer matrix product


_integer_evaluation = [False]


@contextlib.contextmanager
def integer_evaluation():
    """Inside the block, :func:`_exact_matmul` multiplies int64 tensors (``torch.matmul`` on
    integers, CPU only) instead of float64 ones: every tensor operation of the kernels is then an
    integer one (``lowbit check-integer``). Both evaluations give the same integers."""
    saved = _integer_evaluation[0]
    _integer_evaluation[0] = True
    try:
        yield
    finally:
        _integer_evaluation[0] = saved


def evaluating_integers() -> bool:
    """Whether the calling code is inside :func:`integer_evaluation` (faster evaluations of the
    kernels, which multiply floats, stand aside there)."""
    return _integer_evaluation[0]


def _exact_matmul(a: torch.Tensor, w: torch.Tensor, bound: int) -> torch.Tensor:
    """``a @ w.T`` for int64 ``a [..., M, K]`` and ``w [..., N, K]``, exact.

    ``bound`` is a proven upper limit of ``sum_k |a_k * w_k|``; it must stay below 2**53 so the
    float64 product is exact for every summation order (and the int64 one cannot overflow).
    """
    if bound >= _EXACT_LIMIT:
        raise ValueError(f"matmul bound {bound} is too wide for exact evaluation (>= 2**53)")
    if _integer_evaluation[0]:
        if a.device.type != "cpu":
            raise ValueError("integer evaluation of the matmul kernels runs on the CPU only")
        return torch.matmul(a, w.transpose(-1, -2))
    out = torch.matmul(a.to(torch.float64), w.to(torch.float64).transpose(-1, -2))
    return out.to(torch.int64)


def _check_shapes(a: torch.Tensor, w: torch.Tensor, max_k: int) -> int:
    if a.dim() < 2 or w.dim() < 2:
        raise ValueError(f"activations must be [..., M, K] and weights [..., N, K]; "
                         f"got {tuple(a.shape)} and {tuple(w.shape)}")
    k = a.shape[-1]
    if w.shape[-1] != k:
        raise ValueError(f"K mismatch: activations {tuple(a.shape)} vs weights {tuple(w.shape)} "
                         f"(weights are [N, K])")
    if k < 1 or k > max_k:
        raise ValueError(f"K must be in 1..{max_k}, not {k}")
    return k


def _add_bias(acc: torch.Tensor, bias: torch.Tensor | None, bound: int,
              check: bool = True) -> torch.Tensor:
    if bias is None:
        return acc
    bias = check_range("bias", bias, -bound, bound) if check else as_int("bias", bias)
    if bias.dim() != 1 or bias.shape[0] != acc.shape[-1]:
        raise ValueError(f"bias must be [N] with N={acc.shape[-1]}, not {tuple(bias.shape)}")
    return acc + bias.to(acc.device)


# ---------------------------------------------------------------------------------------------
# INT8 (and INT2..INT8) matmul


def int_matmul(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None, *,
               a_bits: int = 8, w_bits: int = 8, max_k: int = DEFAULT_MAX_K,
               check: bool = True) -> torch.Tensor:
    """Integer matmul of the INT unit: ``acc[m, n] = sum_k a[m, k] * w[n, k] + bias[n]``.

    Parameters
    ----------
    a : int tensor [..., M, K], signed ``a_bits`` (2..8) values.
    w : int tensor [..., N, K], signed ``w_bits`` (2..8) values.
    bias : int tensor [N] or None, ``|bias| <= max_k * 2**(a_bits+w_bits-2)``.
    max_k : the unit's largest K; the accumulator has ``int_acc_width(a_bits, w_bits, max_k)``
        bits (32 for INT8 with the default ``max_k``) and cannot overflow.

    check : False skips the operand range checks (device syncs) for operands that have their
        widths by construction (quantization-aware training); the sum stays exact as long as
        they do.

    Returns the exact accumulator (int64 tensor [..., M, N]).
    """
    _check_bits("a_bits", a_bits, 2, 8)
    _check_bits("w_bits", w_bits, 2, 8)
    a = check_signed("activations", a, a_bits) if check else as_int("activations", a)
    w = check_signed("weights", w, w_bits) if check else as_int("weights", w)
    k = _check_shapes(a, w, max_k)
    pmax = int_max_product(a_bits, w_bits)
    acc = _exact_matmul(a, w, k * pmax)
    return _add_bias(acc, bias, bias_bound(pmax, max_k), check)


# ---------------------------------------------------------------------------------------------
# Logarithmic (power-of-two) weights: sign + exponent index, the multiply is a shift


def log_code_fields(codes: torch.Tensor, bits: int, zero_code: bool = False, check: bool = True):
    """Split codes into ``(sign, exponent_index, is_zero)``; checks that every code is valid.

    Layout: bit ``bits-1`` is the sign (1 = negative), bits ``bits-2..0`` the exponent index
    ``e`` (0 = the largest magnitude). Valid ``e`` are ``0 .. log_depth-1`` plus, with
    ``zero_code``, ``e == log_depth`` meaning zero (with either sign bit).
    ``check=False`` skips the validity checks (three device syncs) for codes that come straight
    from :func:`log_quantize` or were validated when read; the kernels always check.
    """
    depth = log_depth(bits, zero_code)
    codes = (check_range("log codes", codes, 0, (1 << bits) - 1) if check
             else as_int("log codes", codes))
    sign = codes >> (bits - 1)
    e = codes & ((1 << (bits - 1)) - 1)
    top = depth if zero_code else depth - 1
    if check and e.numel() and int(e.max()) > top:
        raise ValueError(f"log codes have exponent index {int(e.max())} > {top}, "
                         f"invalid for {bits}-bit codes (zero_code={zero_code})")
    is_zero = (e == depth) if zero_code else torch.zeros_like(e, dtype=torch.bool)
    return sign, e, is_zero


def log_weight_values(codes: torch.Tensor, bits: int, zero_code: bool = False,
                      check: bool = True) -> torch.Tensor:
    """Integer weight of each code: ``(-1)**sign * 2**(depth-1-e)`` (0 for the zero code).

    The real weight is ``scale * 2**-(depth-1) * value``, where ``scale`` is the tensor's
    log scale ``S`` (the largest magnitude). ``check`` as in :func:`log_code_fields`.
    """
    depth = log_depth(bits, zero_code)
    sign, e, is_zero = log_code_fields(codes, bits, zero_code, check)
    shift = (depth - 1 - e).clamp(min=0)
    mag = torch.ones_like(e) << shift
    val = torch.where(sign.bool(), -mag, mag)
    return torch.where(is_zero, torch.zeros_like(val), val)


def log_matmul(a: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None = None, *,
               bits: int, a_bits: int = 8, zero_code: bool = False,
               max_k: int = DEFAULT_MAX_K, check: bool = True) -> torch.Tensor:
    """Shift-based matmul: ``acc[m, n] = sum_k (+-a[m, k] << (depth-1-e[n, k])) + bias[n]``.

    ``a`` is [..., M, K] signed ``a_bits``; ``codes`` is [N, K] ``bits``-bit log codes.
    The product with a power of two is an arithmetic left shift, so the sum is exact.
    ``check`` as in :func:`int_matmul`.
    """
    _check_bits("a_bits", a_bits, 2, 8)
    a = check_signed("activations", a, a_bits) if check else as_int("activations", a)
    w = log_weight_values(codes, bits, zero_code, check)
    k = _check_shapes(a, w, max_k)
    pmax = log_max_product(a_bits, bits, zero_code)
    acc = _exact_matmul(a, w, k * pmax)
    return _add_bias(acc, bias, bias_bound(pmax, max_k), check)


def log_quantize(w: torch.Tensor, bits: int, *, zero_code: bool = False,
                 scale: float | None = None, refine_iters: int = 0, check: bool = True):
    """Aji & Heafield's logarithmic quantizer for one tensor.

    ``S`` starts at ``max|w|`` (or ``scale``); ``r = clip(w, -S, S)``;
    ``e = clip(floor(log2(|r| / S * 4/3)), -(depth-1), 0)`` (the 4/3 puts the rounding point
    in linear space, halfway between neighbouring powers of two); ``q = sign(r) * S * 2**e``.
    With ``zero_code``, values below half the smallest magnitude become exactly 0.
    ``refine_iters`` rounds of ``S <- sum(a*w) / sum(a*a)`` with ``a = q / S`` (sums correctly
    rounded with :func:`math.fsum`, so ``S`` is the same on every device).

    ``check=False`` skips the finiteness check, a device sync per call that quantization-aware
    training's error feedback cannot afford on every weight matrix of every step (a non-finite
    weight shows up there as a non-finite loss).

    Returns ``(codes int64 like w, S float)``; dequantized ``S * 2**-(depth-1) * values``.
    """
    depth = log_depth(bits, zero_code)
    w = w.detach().to(torch.float64)
    if check and w.numel() and not bool(torch.isfinite(w).all()):
        raise ValueError("cannot log-quantize a tensor with non-finite values")
    if scale is None:
        s = float(w.abs().max()) if w.numel() else 0.0
        if s == 0.0:
            s = 1.0
    else:
        s = float(scale)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"log-quantization scale must be finite and positive, not {scale!r}")
    for it in range(refine_iters + 1):
        r = w.clamp(-s, s)
        mag = r.abs() / s
        # floor(log2(x)) read off the binary exponent (x = m * 2**ex, m in [0.5, 1)) rather
        # than from log2, whose rounding turns values just below a power of two into that
        # power (then 2**-4 - ulp would quantize like the midpoint itself). x = mag * 4/3 is
        # one correctly rounded product, so it lies below 2**e exactly when mag < 3/4 * 2**e.
        _, ex = torch.frexp(mag * (4.0 / 3.0))
        e = (ex.to(torch.float64) - 1).clamp(-(depth - 1), 0)
        e = torch.where(mag > 0, e, torch.full_like(e, -(depth - 1)))
        idx = (-e).to(torch.int64)
        neg = (r < 0).to(torch.int64)
        if zero_code:
            tiny = mag < 2.0 ** (-(depth - 1)) / 2
            idx = torch.where(tiny, torch.full_like(idx, depth), idx)
        codes = (neg << (bits - 1)) | idx
        if it < refine_iters:
            a = log_weight_values(codes, bits, zero_code, check=False).to(torch.float64)
            a = a * 2.0 ** (1 - depth)
            # math.fsum is correctly rounded, so the refined scale does not depend on the
            # device or on a parallel reduction's summation order (CPU and CUDA agree).
            den = math.fsum((a * a).flatten().cpu().tolist())
            if den > 0:
                s = math.fsum((a * w).flatten().cpu().tolist()) / den
    return codes, s


# ---------------------------------------------------------------------------------------------
# Binary coding and XNOR-popcount


def pack_bits(signs: torch.Tensor) -> torch.Tensor:
    """Pack a +-1 (or bool, True = +1) tensor ``[..., K]`` into 32-bit words ``[..., ceil(K/32)]``.

    Element ``k`` goes to word ``k // 32``, bit ``k % 32`` (LSB first); +1 -> 1, -1 -> 0;
    padding bits are 0. Words are returned as int64 holding the unsigned 32-bit value.
    """
    if signs.dtype == torch.bool:
        bits = signs.to(torch.int64)
    else:
        s = as_int("signs", signs)
        if s.numel() and not bool(((s == 1) | (s == -1)).all()):
            raise ValueError("signs must be +1 or -1")
        bits = (s > 0).to(torch.int64)
    k = bits.shape[-1]
    nwords = (k + WORD_BITS - 1) // WORD_BITS
    pad = nwords * WORD_BITS - k
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], nwords, WORD_BITS)
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=bits.device) << torch.arange(
        WORD_BITS, device=bits.device)
    return (bits * weights).sum(-1)


def unpack_bits(words: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``[..., W]`` words -> ``[..., k]`` of +-1 (int64)."""
    words = check_range("packed words", words, 0, (1 << WORD_BITS) - 1)
    if k < 1 or k > words.shape[-1] * WORD_BITS:
        raise ValueError(f"K={k} does not fit {words.shape[-1]} words of {WORD_BITS} bits")
    shifts = torch.arange(WORD_BITS, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*words.shape[:-1], -1)[..., :k]
    return bits * 2 - 1


def popcount_dot(a_words: torch.Tensor, w_words: torch.Tensor, k: int) -> torch.Tensor:
    """``2 * popcount(xnor(a, w) & mask_K) - K`` for packed vectors, computed bitwise.

    ``a_words [..., W]`` and ``w_words [..., W]`` broadcast. This is the datapath identity the
    RTL implements; :func:`xnor_matmul` evaluates the same sum as a +-1 matrix product.
    """
    nwords = (k + WORD_BITS - 1) // WORD_BITS
    a_words = check_range("packed words", a_words, 0, (1 << WORD_BITS) - 1)
    w_words = check_range("packed words", w_words, 0, (1 << WORD_BITS) - 1)
    have = min(a_words.shape[-1], w_words.shape[-1])
    if k < 1 or k > have * WORD_BITS:
        raise ValueError(f"K={k} does not fit {have} words of {WORD_BITS} bits")
    a_words, w_words = a_words[..., :nwords], w_words[..., :nwords]
    full = (1 << WORD_BITS) - 1
    x = ~(a_words ^ w_words) & full
    last = k - (nwords - 1) * WORD_BITS
    mask = torch.full((nwords,), full, dtype=torch.int64, device=x.device)
    mask[-1] = (1 << last) - 1
    x = x & mask
    shifts = torch.arange(WORD_BITS, device=x.device)
    pop = ((x.unsqueeze(-1) >> shifts) & 1).sum((-1, -2))
    return 2 * pop - k


def xnor_matmul(a_words: torch.Tensor, w_words: torch.Tensor, alpha: torch.Tensor, k: int,
                bias: torch.Tensor | None = None, *,
                max_k: int = DEFAULT_MAX_K) -> torch.Tensor:
    """Bit-plane XNOR-popcount matmul.

    ``acc[m, n] = sum_i sum_j alpha[i, n] * 2**j * dot(a_j[m], w_i[n]) + bias[n]`` where
    ``dot = 2 * popcount(xnor) - K`` over the first ``K`` bits.

    Parameters
    ----------
    a_words : [Pa, M, W] packed activation planes; plane ``j`` has weight ``2**j``, so the
        activation is ``sum_j 2**j * s_j`` (an odd integer in ``[-(2**Pa-1), 2**Pa-1]``).
    w_words : [Pw, N, W] packed weight planes (binary coding ``w = sum_i alpha_i * b_i``).
    alpha : [Pw, N] unsigned ``ALPHA_BITS`` integer plane scales, per plane and output channel.
    k : number of valid bits (K); padding bits are ignored.
    """
    if a_words.dim() != 3 or w_words.dim() != 3:
        raise ValueError(f"packed planes must be [P, rows, words]; got {tuple(a_words.shape)} "
                         f"and {tuple(w_words.shape)}")
    pa, pw = a_words.shape[0], w_words.shape[0]
    _check_bits("activation planes", pa, 1, 8)
    _check_bits("weight planes", pw, 1, 8)
    if not 1 <= k <= max_k:
        raise ValueError(f"K must be in 1..{max_k}, not {k}")
    alpha = check_range("alpha", alpha, 0, (1 << ALPHA_BITS) - 1)
    if tuple(alpha.shape) != (pw, w_words.shape[1]):
        raise ValueError(f"alpha must be [Pw, N] = {(pw, w_words.shape[1])}, "
                         f"not {tuple(alpha.shape)}")
    a_pm = unpack_bits(a_words, k)                      # [Pa, M, K] of +-1
    w_pm = unpack_bits(w_words, k)                      # [Pw, N, K] of +-1
    plane_w = (torch.ones(pa, dtype=torch.int64, device=a_pm.device)
               << torch.arange(pa, device=a_pm.device))
    a_int = (a_pm * plane_w.view(pa, 1, 1)).sum(0)      # [M, K] odd integers
    w_int = (w_pm * alpha.to(w_pm.device).unsqueeze(-1)).sum(0)  # [N, K]
    pmax = xnor_max_product(pa, pw)
    acc = _exact_matmul(a_int, w_int, k * pmax)
    return _add_bias(acc, bias, bias_bound(pmax, max_k))


def activation_planes(a: torch.Tensor, planes: int) -> torch.Tensor:
    """Split odd integer activations ``a = sum_j 2**j * s_j`` into +-1 planes ``[P, ..., K]``.

    With ``u = (a + 2**P - 1) / 2`` (an unsigned P-bit integer), ``s_j = 2 * bit_j(u) - 1``.
    """
    _check_bits("activation planes", planes, 1, 8)
    lim = (1 << planes) - 1
    a = check_range("binary-coded activations", a, -lim, lim)
    if a.numel() and bool(((a & 1) == 0).any()):
        raise ValueError("binary-coded activations must be odd integers")
    u = (a + lim) >> 1
    return torch.stack([((u >> j) & 1) * 2 - 1 for j in range(planes)])


def binary_code(w: torch.Tensor, planes: int):
    """Greedy binary coding (Chung et al. 2020): ``w[n, :] ~ sum_i alpha[i, n] * b[i, n, :]``.

    Each step takes ``b = sign(residual)`` (``sign(0) = +1``), ``alpha = mean|residual|`` per row,
    and subtracts. Returns ``(b [P, N, K] +-1 int64, alpha [P, N] float64)``.
    """
    _check_bits("planes", planes, 1, 8)
    r = w.detach().to(torch.float64)
    bs, alphas = [], []
    for _ in range(planes):
        b = torch.where(r >= 0, 1.0, -1.0).to(torch.float64)
        alpha = r.abs().mean(-1)
        r = r - alpha.unsqueeze(-1) * b
        bs.append(b.to(torch.int64))
        alphas.append(alpha)
    return torch.stack(bs), torch.stack(alphas)


def quantize_alpha(alpha: torch.Tensor):
    """Integer plane scales: ``alpha ~ alpha_int * scale[n]`` with ``alpha_int`` in ALPHA_BITS.

    Per output channel, ``scale[n] = max_i alpha[i, n] / (2**ALPHA_BITS - 1)``.
    Returns ``(alpha_int [P, N] int64, scale [N] float64)``.
    """
    alpha = alpha.to(torch.float64)
    top = (1 << ALPHA_BITS) - 1
    scale = alpha.max(0).values / top
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    alpha_int = torch.round(alpha / scale).clamp(0, top).to(torch.int64)
    return alpha_int, scale


# ---------------------------------------------------------------------------------------------
# Host-side quantization of activations and requantization


def quantize_symmetric(x: torch.Tensor, scale, bits: int) -> torch.Tensor:
    """Float -> signed ``bits`` integer: ``clamp(round_half_even(x / scale), -2**(b-1), 2**(b-1)-1)``.

    ``scale`` is a positive float or a tensor broadcasting against ``x`` (e.g. per token).
    Division and round-half-to-even are exactly rounded IEEE operations, identical on CPU/GPU.
    """
    return quantize_symmetric_values(x, scale, bits).to(torch.int64)


def quantize_symmetric_values(x: torch.Tensor, scale, bits: int) -> torch.Tensor:
    """:func:`quantize_symmetric`'s integers, left in the float tensor they were rounded in
    (``x``'s dtype promoted with ``scale``'s; float32 and float64 hold every 16-bit integer
    exactly): the operand of :class:`PreparedMatmul`, without the round trip through int64."""
    _check_bits("bits", bits, 2, 16)
    lo, hi = int_range(bits)
    return torch.div(x, scale).round_().clamp_(lo, hi)


def requant_params(scale, *, check: bool = True):
    """Integer multiplier and shift for each real scale: ``scale ~ mult * 2**-shift``.

    ``mult`` is unsigned MULT_BITS (normalised into ``[2**15, 2**16)`` when the shift allows),
    ``shift`` is 0..SHIFT_MAX. Scales must lie in ``(0, 2**16 - 1/2)`` (at shift 0 the
    multiplier is ``round(scale)``, which must stay below 2**16); scales too small for the
    largest shift get the largest shift (and a smaller multiplier, possibly 0).
    ``scale`` is a sequence or a float64 tensor of any shape on any device (``frexp``, scaling
    by powers of two and round-half-even are exact, so every device gives the same integers);
    ``check=False`` skips the validity checks (device syncs) for scales that are valid by
    construction. Returns ``(mult int64, shift int64)`` shaped like ``scale`` (1-D for a
    sequence), on its device.
    """
    scale = torch.as_tensor(scale, dtype=torch.float64)
    top = (1 << MULT_BITS) - 1
    if check and scale.numel():
        if not bool(torch.isfinite(scale).all()) or float(scale.min()) <= 0:
            raise ValueError("requantization scales must be finite and positive")
        if float(scale.max()) >= top + 0.5:
            # round(scale) would need a 17-bit multiplier at shift 0.
            raise ValueError(f"requantization scale {float(scale.max())} is too large: scales "
                             f"must be below {top + 0.5} (multiplier {top} at shift 0)")
    _, e = torch.frexp(scale)                   # s = m * 2**e, m in [0.5, 1)
    shift = (MULT_BITS - e.to(torch.int64)).clamp(0, SHIFT_MAX)  # mult in [2**15, 2**16)
    mult = torch.round(torch.ldexp(scale, shift))
    over = mult > top                           # rounding up to 2**16: one less shift
    shift = torch.where(over, shift - 1, shift)
    mult = torch.where(over, torch.round(torch.ldexp(scale, shift)), mult)
    return mult.to(torch.int64), shift


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: torch.Tensor, *,
               out_bits: int = 8, relu: bool = False, check: bool = True,
               overwrite: bool = False) -> torch.Tensor:
    """Per-output-channel requantization of accumulators ``acc [..., N]`` (bias already added).

    ``p = acc * mult[n]``; ``r = (p + 2**(shift[n]-1)) >> shift[n]`` (round half up; ``r = p``
    when ``shift = 0``); ``r = max(r, 0)`` if ``relu``; saturate to signed ``out_bits``.
    Accumulators are at most ACC_MAX_BITS (47) bits wide; the product is exact.
    ``mult`` and ``shift`` are [N] (per output channel), 0-dim (per tensor) or have ``acc``'s
    number of dimensions and broadcast against it (e.g. [..., 1]: per row). ``check=False``
    skips the range checks (device syncs) for operands valid by construction. ``overwrite``
    lets the same operations run in place in an int64 ``acc`` the caller no longer needs (when
    the result has its shape), and returns it: no new tensor per operation.
    """
    _check_bits("out_bits", out_bits, 2, 32)
    acc = as_int("accumulator", acc)
    if not check:
        mult, shift = as_int("mult", mult).to(acc.device), as_int("shift", shift).to(acc.device)
        return _requantize(acc, mult, shift, out_bits, relu, overwrite)
    mult = check_range("mult", mult, 0, (1 << MULT_BITS) - 1).to(acc.device)
    shift = check_range("shift", shift, 0, SHIFT_MAX).to(acc.device)
    n = acc.shape[-1]
    for name, t in (("mult", mult), ("shift", shift)):
        fits = t.dim() == 0 or (t.dim() == 1 and t.shape == (n,)) or (
            t.dim() == acc.dim() > 1 and all(d in (1, a) for d, a in zip(t.shape, acc.shape)))
        if not fits:
            raise ValueError(f"mult and shift must be [N] with N={n}, 0-dim, or broadcast "
                             f"against the accumulator {tuple(acc.shape)}; {name} is "
                             f"{tuple(t.shape)}")
    if acc.numel() and int(acc.abs().max()) >= 1 << (ACC_MAX_BITS - 1):
        raise ValueError(f"accumulator exceeds {ACC_MAX_BITS} bits; requantization is defined "
                         f"for |acc| < 2**{ACC_MAX_BITS - 1}")
    return _requantize(acc, mult, shift, out_bits, relu, overwrite)


def _requantize(acc, mult, shift, out_bits: int, relu: bool,
                overwrite: bool = False) -> torch.Tensor:
    # |acc| < 2**46 and mult < 2**16, so p and p + 2**(shift-1) (< 2**62 + 2**62) fit int64.
    rnd = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0),
                      torch.zeros_like(shift))
    lo_s, hi_s = int_range(out_bits)
    if overwrite and acc.dtype == torch.int64 and \
            torch.broadcast_shapes(acc.shape, mult.shape, shift.shape) == acc.shape:
        r = acc.mul_(mult).add_(rnd).bitwise_right_shift_(shift)
        if relu:
            r.clamp_(min=0)
        return r.clamp_(lo_s, hi_s)
    p = acc * mult
    r = (p + rnd) >> shift
    if relu:
        r = r.clamp(min=0)
    return r.clamp(lo_s, hi_s)


# ---------------------------------------------------------------------------------------------
# Fast evaluation with prepared weights: the kernels' integers from fewer, cheaper operations


FLOAT32_EXACT = 1 << 24   # float32 represents every integer of magnitude <= 2**24
_INT32_MAX = (1 << 31) - 1


def float32_matmul_is_ieee(device) -> bool:
    """Whether float32 matrix products on ``device`` round in IEEE single precision.

    PyTorch can trade precision for speed in float32 products (TF32 on CUDA, bf16 through oneDNN
    on the CPU: ``torch.backends.*.matmul.fp32_precision``, ``set_float32_matmul_precision``,
    ``allow_tf32``); with fewer mantissa bits even small integer sums are rounded, so the fast
    products then use float64, which no such setting touches.
    """
    cuda = torch.device(device).type == "cuda"
    try:
        if cuda:
            precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
        else:
            precision = getattr(getattr(torch.backends.mkldnn, "matmul", None), "fp32_precision",
                                None)
        if precision is not None:           # PyTorch >= 2.9: per backend; "none" is IEEE
            return precision in ("ieee", "none")
        if cuda and torch.backends.cuda.matmul.allow_tf32:
            return False
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:                    # settings made through both APIs: assume the worst
        return False


_int8_exact: dict = {}


def int8_matmul_is_exact(device) -> bool:
    """Whether ``torch._int_mm`` (int8 x int8 -> int32) gives exact sums on ``device``.

    Only the CPU is considered (CUDA keeps the float products). An integer product is exact
    by nature, but x86 CPUs without VNNI multiply int8 pairs into 16-bit intermediates that
    saturate; PyTorch routes around them, and this checks it once per process: products whose
    pairs of terms overflow 16 bits (``127 * 127 + 127 * 127``, ``-128 * -128 + ...``) and
    random ones against the float64 product.
    """
    if torch.device(device).type != "cpu":
        return False
    if "cpu" not in _int8_exact:
        ok = hasattr(torch, "_int_mm")
        if ok:
            gen = torch.Generator().manual_seed(0)
            a = torch.randint(-128, 128, (19, 77), generator=gen, dtype=torch.int8)
            b = torch.randint(-128, 128, (77, 13), generator=gen, dtype=torch.int8)
            a[0], a[1], a[2, ::2], b[:, 0], b[:, 1], b[::3, 2] = 127, -128, -128, 127, -128, -128
            try:
                for x, y in ((a, b), (a[:, :1], b[:1]), (a[:1], b[:, :1])):
                    x, y = int8_operand(x), int8_operand(y)
                    got = torch._int_mm(x, y)
                    ok = ok and got.dtype == torch.int32 and torch.equal(
                        got.to(torch.float64), x.to(torch.float64) @ y.to(torch.float64))
            except (RuntimeError, NotImplementedError):
                ok = False
        _int8_exact["cpu"] = ok
    return _int8_exact["cpu"]


_int8_fast: dict = {}


def int8_matmul_is_fast() -> bool:
    """Whether ``torch._int_mm`` on the CPU beats a float64 product of the same shape (checked
    once per process, on a 64 x 512 x 256 product, best of three each).

    Where the CPU has an int8 dot product (VNNI, AMX) the int8 plan is the fastest exact one;
    without one PyTorch's int8 kernel can be slower than even float64 (about 50 times slower
    than float32 on an AVX2-only AMD EPYC), and :class:`PreparedMatmul` does not choose it by
    default. Either way the sums are the same exact integers: only the speed depends on this.
    """
    if "cpu" not in _int8_fast:
        fast = int8_matmul_is_exact("cpu")
        if fast:
            gen = torch.Generator().manual_seed(0)
            a = torch.randint(-128, 128, (64, 512), generator=gen, dtype=torch.int8)
            b = torch.randint(-128, 128, (512, 256), generator=gen, dtype=torch.int8)
            af, bf = a.to(torch.float64), b.to(torch.float64)

            def best(product) -> float:
                product()
                times = []
                for _ in range(3):
                    start = time.perf_counter()
                    product()
                    times.append(time.perf_counter() - start)
                return min(times)

            fast = best(lambda: torch._int_mm(a, b)) < best(lambda: af @ bf)
        _int8_fast["cpu"] = fast
    return _int8_fast["cpu"]


class PreparedMatmul:
    """The constant weights of one unit matmul, prepared once for many exact products.

    Calling it with activations ``a [M, K]`` returns ``a @ W.T + bias``: the integers of
    :func:`int_matmul`, :func:`log_matmul` or :func:`xnor_matmul` on the same operands, as an
    integer-valued float tensor (float32 or float64). The weights are planes with integer
    scales, ``W[n, k] = sum_j alpha[j, n] * b_j[n, k]`` (one plane with ``alpha = 1`` for the
    INT and log units); everything that depends on them alone is done here once, including a
    bound on every partial sum, ``max_n (a_max * sum_k |W[n, k]| + |bias[n]|)``. The product:

    * ``"int8"`` (CPU, :func:`int8_matmul_is_exact`; by default only where
      :func:`int8_matmul_is_fast`): when the planes and the activations are
      8-bit integers -- or the activations are the XNOR unit's odd 8-plane values ``a = 2q+1``,
      multiplied as ``q`` (``a . b = 2 q . b + sum_k b``) -- one int8 product of all planes
      into exact int32 sums (``|sum| <= 128 * max|b| * K < 2**31``), combined as
      ``sum_j alpha[j, n] * sum_j + bias`` in float64 (integers below 2**53: exact);
    * ``"float32"``: one float32 product of ``W`` (and the bias added in it) when the bound is
      at most 2**24: every partial sum, in any order, is an integer float32 holds exactly;
    * ``"planes"``: for one plane whose scaled sum is too wide for float32, the plane's
      product in float32 (bounded by ``a_max * max|b| * K <= 2**24``), times ``alpha`` plus the
      bias in float64;
    * ``"float64"``: one float64 product of ``W``, exact for any bound below 2**53.

    The float32 plans fall back to float64 where float32 products are not IEEE
    (:func:`float32_matmul_is_ieee`). The activations must be integers of the kernel's width
    (:func:`quantize_symmetric_values`; the XNOR unit's odd values, or use :meth:`odd`): valid
    by construction, they are not checked per call. Build with :func:`prepare_int`,
    :func:`prepare_log` or :func:`prepare_xnor`, which check the weights and the bias as the
    kernels do. docs/numerics.md ("Exactness of the golden kernels") has the arguments.
    """

    PLANS = ("int8", "float32", "planes", "float64")

    def __init__(self, planes: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 a_max: int, odd: bool, plan: str | None = None):
        # planes: int64 [P, N, K]; alpha: int64 [P, N] (>= 0); odd: activations are odd values
        # of a_max = 2**Pa - 1 (XNOR unit), else signed integers of magnitude <= a_max.
        p, n, k = planes.shape
        eff = (planes * alpha.unsqueeze(-1)).sum(0) if p > 1 else planes[0] * alpha[0, :, None]
        row = eff.abs().sum(-1) * a_max + (0 if bias is None else bias.abs())
        self.bound = int(row.max()) if row.numel() else 0
        if self.bound >= _EXACT_LIMIT:
            raise ValueError(f"matmul bound {self.bound} is too wide for exact evaluation "
                             f"(>= 2**53)")
        b_max = int(planes.abs().max()) if planes.numel() else 0
        self.k, self.n, self.a_max, self.odd_values = k, n, a_max, odd
        self.half = odd and a_max > 127          # a = 2q + 1 with q in -128..127
        fits8 = (int(planes.min()) >= -128 and int(planes.max()) <= 127 if planes.numel()
                 else True)
        exact = {"int8": (fits8 and (a_max <= 128 or self.half)
                          and 128 * max(b_max, 1) * k <= _INT32_MAX
                          and int8_matmul_is_exact("cpu")),
                 "float32": self.bound <= FLOAT32_EXACT,
                 "planes": p == 1 and a_max * b_max * k <= FLOAT32_EXACT,
                 "float64": True}
        if plan is None:    # the first exact plan; int8 only where it is fast
            plan = next(name for name in self.PLANS
                        if exact[name] and (name != "int8" or int8_matmul_is_fast()))
        elif plan not in self.PLANS:
            raise ValueError(f"plan must be one of {', '.join(self.PLANS)}, not {plan!r}")
        elif not exact[plan]:
            raise ValueError(f"plan {plan!r} is not exact for these weights "
                             f"(bound {self.bound}, K={k})")
        self.plan = plan
        self._eff, self._bias = eff, bias
        self._build(planes, alpha)
        self._wide = None

    def _build(self, planes: torch.Tensor, alpha: torch.Tensor) -> None:
        f64 = torch.float64
        bias = self._bias
        if self.plan == "float32" or self.plan == "float64":
            dtype = torch.float32 if self.plan == "float32" else f64
            self.wt = self._eff.T.to(dtype).contiguous()             # [K, N]: as the GEMM reads
            self.bias = None if bias is None else bias.to(dtype)
            return
        if self.plan == "planes":
            self.wt = planes[0].T.to(torch.float32).contiguous()
            self.alpha = alpha[0].to(f64)
            self.bias = None if bias is None else bias.to(f64)
            return
        # int8: plane j of the rows that have it (segment j), each an int8 [K, width] operand;
        # with several planes, in blocks of at most _INT8_BLOCK rows: one product of the planes
        # of several thousand rows is several times slower than its blocks', and its int32 and
        # float64 sums would be tensors of tens of MB (one plane: one product, converted in
        # place). Row n has planes 0 .. count[n]-1 (trailing planes with alpha 0 add exact
        # zeros and are left out); segment 0 is plane 0 of every row, in row order.
        p, n, _ = planes.shape
        nonzero = alpha != 0
        last = torch.where(nonzero, torch.arange(1, p + 1).unsqueeze(-1), 0).amax(0)
        count = last.clamp(min=1)
        plane_sums = torch.zeros(n, dtype=torch.int64)    # sum_j alpha_j * sum_k b_j[n, k]
        self.segments, self.blocks = [], []     # blocks: (segment, first row in it, [K, width])
        block = _INT8_BLOCK if int(count.max()) > 1 else n
        for j in range(p):
            rows = torch.nonzero(count > j).flatten()
            if not rows.numel():
                break
            plane_sums[rows] += alpha[j, rows] * planes[j, rows].sum(-1)
            self.segments.append((None if rows.numel() == n else rows, alpha[j, rows]))
            for start in range(0, rows.numel(), block):
                part = planes[j, rows[start:start + block]]
                self.blocks.append((j, start, int8_operand(part.T)))
        self.plane_sums = plane_sums
        self.bias = None
        self._affine = {}

    def _affine_terms(self, s: int, c: int, dtype: torch.dtype = torch.float64):
        """For activations ``a = s * x + c`` given as ``x``: ``a . b_j = s (x . b_j) + c sum_k
        b_j``, so ``acc = sum_j (s alpha_j) t_j + (bias + c sum_j alpha_j sum_k b_j)``. The
        constant and the segment weights (None for 1) in ``dtype`` (float64 or int64: exact),
        built once."""
        terms = self._affine.get((s, c, dtype))
        if terms is None:
            const = self.plane_sums * c
            if self._bias is not None:
                const = const + self._bias.to(const.device)
            weights = [None if bool((alpha * s == 1).all()) else (alpha * s).to(dtype)
                       for _, alpha in self.segments]
            const = None if not bool(const.any()) else const.to(dtype)
            terms = self._affine[(s, c, dtype)] = (const, weights)
        return terms

    @property
    def device(self) -> torch.device:
        return self._eff.device

    def to(self, device) -> "PreparedMatmul":
        """This matmul with its tensors on ``device`` (a new object; ``self`` if already there).
        The int8 plan is CPU-only: elsewhere it becomes the float plan the bound allows."""
        device = torch.device(device)
        if device == self.device:
            return self
        new = object.__new__(PreparedMatmul)
        new.__dict__.update(self.__dict__)
        new._wide = None
        if self.plan == "int8" and device.type != "cpu":
            new._eff = self._eff.to(device)
            new._bias = None if self._bias is None else self._bias.to(device)
            new.plan = "float32" if self.bound <= FLOAT32_EXACT else "float64"
            new._build(None, None)
            return new
        for name, t in list(new.__dict__.items()):
            if isinstance(t, torch.Tensor):
                setattr(new, name, t.to(device))
        return new

    def _float64(self):
        if self._wide is None:
            self._wide = (self._eff.T.to(torch.float64).contiguous(),
                          None if self._bias is None else self._bias.to(torch.float64))
        return self._wide

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """``a @ W.T + bias`` for activations ``a [M, K]`` (integer-valued, any float dtype)."""
        if self.plan == "int8":
            return self._int8((a - 1) / 2, 2, 1) if self.half else self._int8(a, 1, 0)
        return self._float(a)

    def integers(self, a: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` as an int64 tensor, for integer activations ``a [M, K]`` (int64 or
        integer-valued float): the int8 plan combines its int32 sums in int64 (exact: every
        partial sum is below 2**53), the float plans convert their exact product."""
        if self.plan == "int8" and not self.half:
            return self._int8(a, 1, 0, torch.int64)
        return self(a if a.dtype.is_floating_point else a.to(torch.float64)).to(torch.int64)

    def odd(self, q: torch.Tensor) -> torch.Tensor:
        """The product for the odd activations ``a = 2q + 1`` (the XNOR unit's 8-plane coding
        of 8-bit integers ``q``, [M, K], integer-valued float or :func:`int8_operand`): the int8
        plan multiplies ``q`` itself."""
        if self.plan == "int8":
            return self._int8(q, 2, 1)
        return self(q.to(torch.float64) * 2 + 1)

    def signs(self, positive: torch.Tensor) -> torch.Tensor:
        """The product for the +-1 activations ``a = 2u - 1`` of the bool tensor
        ``u = positive [M, K]`` (the XNOR unit's 1-plane activations): the int8 plan multiplies
        the bits ``u`` themselves."""
        if self.plan == "int8":
            return self._int8(positive, 2, -1)
        return self(positive.to(torch.float32) * 2 - 1)

    def _int8(self, x: torch.Tensor, s: int, c: int,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The product for activations ``a = s * x + c`` given as ``x`` (8-bit integers), as a
        ``dtype`` (float64 or int64) tensor: each block's int32 sums (into
        :func:`_int8_scratch`) converted and combined into the result with same-dtype
        operations (exact: every partial sum is an integer below 2**53,
        ``sum_j alpha_j |t_j| <= 128 K sum_j alpha_j``)."""
        const, weights = self._affine_terms(s, c, dtype)
        x8 = int8_operand(x)
        m = x8.shape[0]
        if len(self.blocks) == 1:               # one plane per row, one block: in place
            w8, weight = self.blocks[0][2], weights[0]
            t = torch._int_mm(x8, w8, out=_int8_scratch(m, w8.shape[1])).to(dtype)
            if weight is None:
                return t if const is None else t.add_(const)
            # const + t * w in one pass: t * w is an exact integer, so fused or not, the same
            return t.mul_(weight) if const is None else torch.addcmul(const, t, weight, out=t)
        out = torch.empty(m, self.n, dtype=dtype)
        for j, start, w8 in self.blocks:
            width = w8.shape[1]
            t = torch._int_mm(x8, w8, out=_int8_scratch(m, width)).to(dtype)
            weight = weights[j]
            if weight is not None:
                t.mul_(weight[start:start + width])
            rows = self.segments[j][0]
            if j == 0:                          # plane 0 of every row: the first term
                out[:, start:start + width] = t
            elif rows is None:
                out[:, start:start + width] += t
            else:
                out.index_add_(1, rows[start:start + width], t)
        return out if const is None else out.add_(const)

    def _float(self, a: torch.Tensor) -> torch.Tensor:
        plan = self.plan
        if plan != "float64" and not float32_matmul_is_ieee(a.device):
            wt, bias = self._float64()
            return _product(a.to(torch.float64), wt, bias)
        if plan == "float32":
            return _product(a.to(torch.float32), self.wt, self.bias)
        if plan == "planes":
            t = torch.matmul(a.to(torch.float32), self.wt).to(torch.float64).mul_(self.alpha)
            return t if self.bias is None else t.add_(self.bias)
        return _product(a.to(torch.float64), self.wt, self.bias)


def int8_operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` (a matrix of integers in -128..127, or bools) as an operand of
    :class:`PreparedMatmul`'s int8 product: int8 with the standard row-major strides (returned
    as it is if it is one already). ``torch._int_mm`` reads a size-1 dimension's stride as a
    leading dimension: a "contiguous" [1, N] whose row stride is 1 (a transposed [N, 1]) gives
    wrong sums."""
    if t.dtype == torch.int8 and t.dim() == 2 and t.stride() == (t.shape[1], 1):
        return t
    out = torch.empty(t.shape, dtype=torch.int8, device=t.device)
    return out.copy_(t)


_INT8_BLOCK = 1024        # weight rows per int8 product
_scratch: dict = {}


def _int8_scratch(m: int, r: int) -> torch.Tensor:
    """A CPU int32 buffer ``[m, r]`` (standard strides) for one int8 product's sums, reused by
    every :class:`PreparedMatmul` of the calling thread: ``torch._int_mm`` into a fresh tensor
    costs several times the product itself at decode sizes. The contents are valid until the
    thread's next product."""
    key = threading.get_ident()
    buf = _scratch.get(key)
    if buf is None or buf.numel() < m * r:
        buf = _scratch[key] = torch.empty(m * r, dtype=torch.int32)
    return buf[:m * r].view(m, r)


def _product(a: torch.Tensor, wt: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return torch.matmul(a, wt)
    if a.dim() == 2:
        return torch.addmm(bias, a, wt)
    return torch.matmul(a, wt) + bias


def int_matmul_values(a: torch.Tensor, w: torch.Tensor, *, a_bits: int = 8, w_bits: int = 8,
                      max_k: int = DEFAULT_MAX_K) -> torch.Tensor:
    """:func:`int_matmul` without bias of integer-valued float operands that both vary per call
    (Q.K^T, attention.V), as an integer-valued float tensor. When either operand is float32,
    ``K * Pmax <= 2**24`` and float32 products are IEEE on the device (:func:`int_float32_exact`),
    the product is float32; otherwise float64 (exact below 2**53), so two float64 operands are
    multiplied as they are. The operands must hold signed ``a_bits`` / ``w_bits`` integers
    (:func:`quantize_symmetric_values`); they are not checked."""
    _check_bits("a_bits", a_bits, 2, 8)
    _check_bits("w_bits", w_bits, 2, 8)
    k = _check_shapes(a, w, max_k)
    narrow = (torch.float32 in (a.dtype, w.dtype)
              and int_float32_exact(k, a_bits, w_bits, a.device))
    dtype = torch.float32 if narrow else torch.float64
    return torch.matmul(a.to(dtype), w.to(dtype).transpose(-1, -2))


def int_float32_exact(k: int, a_bits: int, w_bits: int, device) -> bool:
    """Whether a float32 product of signed ``a_bits`` by ``w_bits`` integers over ``K = k`` is
    exact on ``device``: ``k * Pmax <= 2**24`` and IEEE float32 products."""
    return (k * int_max_product(a_bits, w_bits) <= FLOAT32_EXACT
            and float32_matmul_is_ieee(device))


def _check_weight_matrix(w: torch.Tensor, max_k: int) -> None:
    if w.dim() != 2:
        raise ValueError(f"prepared weights must be [N, K], not {tuple(w.shape)}")
    _check_shapes(w, w, max_k)


def _prepared_bias(bias: torch.Tensor | None, n: int, bound: int) -> torch.Tensor | None:
    if bias is None:
        return None
    bias = check_range("bias", bias, -bound, bound)
    if bias.dim() != 1 or bias.shape[0] != n:
        raise ValueError(f"bias must be [N] with N={n}, not {tuple(bias.shape)}")
    return bias.cpu()


def prepare_int(w: torch.Tensor, bias: torch.Tensor | None = None, *, a_bits: int = 8,
                w_bits: int = 8, max_k: int = DEFAULT_MAX_K,
                plan: str | None = None) -> PreparedMatmul:
    """:class:`PreparedMatmul` of :func:`int_matmul` with weights ``w [N, K]`` (same checks).
    ``plan`` picks the product (default: the fastest exact one); a plan that is not exact for
    these weights raises :class:`ValueError`."""
    _check_bits("a_bits", a_bits, 2, 8)
    _check_bits("w_bits", w_bits, 2, 8)
    w = check_signed("weights", w, w_bits).cpu()
    _check_weight_matrix(w, max_k)
    bias = _prepared_bias(bias, w.shape[0], bias_bound(int_max_product(a_bits, w_bits), max_k))
    return PreparedMatmul(w[None], torch.ones(1, w.shape[0], dtype=torch.int64), bias,
                          1 << (a_bits - 1), odd=False, plan=plan)


def prepare_log(codes: torch.Tensor, bias: torch.Tensor | None = None, *, bits: int,
                a_bits: int = 8, zero_code: bool = False, max_k: int = DEFAULT_MAX_K,
                plan: str | None = None) -> PreparedMatmul:
    """:class:`PreparedMatmul` of :func:`log_matmul` with codes ``[N, K]`` (same checks;
    ``plan`` as in :func:`prepare_int`)."""
    _check_bits("a_bits", a_bits, 2, 8)
    w = log_weight_values(codes, bits, zero_code).cpu()
    _check_weight_matrix(w, max_k)
    bias = _prepared_bias(bias, w.shape[0],
                          bias_bound(log_max_product(a_bits, bits, zero_code), max_k))
    return PreparedMatmul(w[None], torch.ones(1, w.shape[0], dtype=torch.int64), bias,
                          1 << (a_bits - 1), odd=False, plan=plan)


def prepare_xnor(w_words: torch.Tensor, alpha: torch.Tensor, k: int,
                 bias: torch.Tensor | None = None, *, a_planes: int,
                 max_k: int = DEFAULT_MAX_K, plan: str | None = None) -> PreparedMatmul:
    """:class:`PreparedMatmul` of :func:`xnor_matmul` with packed weight planes ``[Pw, N, W]``,
    for activations of ``a_planes`` planes, passed as their values ``sum_j 2**j * s_j`` (odd
    integers in ``[-(2**Pa-1), 2**Pa-1]``) instead of packed planes. Same checks as the kernel;
    ``plan`` as in :func:`prepare_int`."""
    if w_words.dim() != 3:
        raise ValueError(f"packed planes must be [P, rows, words]; got {tuple(w_words.shape)}")
    pw = w_words.shape[0]
    _check_bits("activation planes", a_planes, 1, 8)
    _check_bits("weight planes", pw, 1, 8)
    if not 1 <= k <= max_k:
        raise ValueError(f"K must be in 1..{max_k}, not {k}")
    alpha = check_range("alpha", alpha, 0, (1 << ALPHA_BITS) - 1).cpu()
    if tuple(alpha.shape) != (pw, w_words.shape[1]):
        raise ValueError(f"alpha must be [Pw, N] = {(pw, w_words.shape[1])}, "
                         f"not {tuple(alpha.shape)}")
    w_pm = unpack_bits(w_words.cpu(), k)                # [Pw, N, K] of +-1
    bias = _prepared_bias(bias, w_pm.shape[1],
                          bias_bound(xnor_max_product(a_planes, pw), max_k))
    return PreparedMatmul(w_pm, alpha, bias, (1 << a_planes) - 1, odd=True, plan=plan)
