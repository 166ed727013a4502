"""Operands for verifying the matmul units: random matmuls and the corner cases of the contract.

Shared by the cocotb testbenches (sim/tb_matmul.py), the harness tests and ``lowbit verify``.
Every function returns the keyword arguments of :meth:`lowbit.hw.driver.Protocol.plan` for the
unit it is given (``a, w, bias, mult, shift, relu, raw`` and, for XNOR, ``alpha, k``), drawn
from a ``numpy.random.Generator`` so a seed fixes everything.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.sw import golden

__all__ = ["random_operands", "corner_cases", "requant_for", "max_product"]


def max_product(hw) -> int:
    """The unit's ``Pmax`` (docs/numerics.md), from the golden helpers."""
    if hw.unit == "int8":
        return golden.int_max_product(hw.a_bits, hw.w_bits)
    if hw.unit == "log":
        return golden.log_max_product(hw.a_bits, hw.bits, hw.zero_code)
    return golden.xnor_max_product(hw.a_planes, hw.w_planes)


def _signed(rng, bits, shape):
    lo, hi = golden.int_range(bits)
    return rng.integers(lo, hi + 1, shape, dtype=np.int64)


def _log_codes(rng, hw, shape, zero_share=0.1):
    depth = golden.log_depth(hw.bits, hw.zero_code)
    sign = rng.integers(0, 2, shape, dtype=np.int64)
    idx = rng.integers(0, depth, shape, dtype=np.int64)
    if hw.zero_code:
        idx = np.where(rng.random(shape) < zero_share, depth, idx)
    return (sign << (hw.bits - 1)) | idx


def _packed(bits01: np.ndarray) -> np.ndarray:
    """0/1 array ``[P, R, K]`` -> packed 32-bit words ``[P, R, ceil(K/32)]`` (golden order)."""
    return golden.pack_bits(torch.from_numpy(bits01.astype(bool))).numpy()


def _acc(hw, a, w, bias, alpha=None, k=None) -> np.ndarray:
    ta, tw, tb = torch.from_numpy(a), torch.from_numpy(w), torch.from_numpy(bias)
    if hw.unit == "int8":
        t = golden.int_matmul(ta, tw, tb, a_bits=hw.a_bits, w_bits=hw.w_bits, max_k=hw.max_k)
    elif hw.unit == "log":
        t = golden.log_matmul(ta, tw, tb, bits=hw.bits, a_bits=hw.a_bits,
                              zero_code=hw.zero_code, max_k=hw.max_k)
    else:
        t = golden.xnor_matmul(ta, tw, torch.from_numpy(alpha), k, tb, max_k=hw.max_k)
    return t.numpy()


def requant_for(rng, hw, t: np.ndarray, spread=(0.3, 1.5)) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mult, shift)`` that map ``t [M, N]`` onto the output range.

    Each channel's scale is ``(2**(out_bits-1)) / (max|t[:, n]| * u)`` with ``u`` drawn from
    ``spread``: ``u < 1`` leaves part of the channel saturating, ``u > 1`` all of it in range, so
    rounding and saturation are both exercised.
    """
    top = 2.0 ** (hw.out_bits - 1)
    peak = np.maximum(np.abs(t).max(axis=0), 1).astype(np.float64)
    scale = top / (peak * rng.uniform(*spread, size=peak.shape))
    scale = np.clip(scale, 2.0 ** -60, 60000.0)
    mult, shift = golden.requant_params(torch.from_numpy(scale))
    return mult.numpy(), shift.numpy()


def random_operands(hw, rng: np.random.Generator, m: int, k: int, n: int, *,
                    relu=None, raw=None) -> dict:
    """A random matmul ``[M, K] x [N, K]`` for the unit ``hw`` (its full operand ranges).

    ``relu`` / ``raw`` default to a random choice (raw one time in five).
    """
    pmax = max_product(hw)
    bound = golden.bias_bound(pmax, hw.max_k)
    bias_mag = min(bound, max(1, k * pmax // 4))
    bias = rng.integers(-bias_mag, bias_mag + 1, n, dtype=np.int64)
    if hw.unit == "int8":
        kw = dict(a=_signed(rng, hw.a_bits, (m, k)), w=_signed(rng, hw.w_bits, (n, k)))
    elif hw.unit == "log":
        kw = dict(a=_signed(rng, hw.a_bits, (m, k)), w=_log_codes(rng, hw, (n, k)))
    else:
        kw = dict(a=_packed(rng.integers(0, 2, (hw.a_planes, m, k))),
                  w=_packed(rng.integers(0, 2, (hw.w_planes, n, k))),
                  alpha=rng.integers(0, 1 << golden.ALPHA_BITS, (hw.w_planes, n), dtype=np.int64),
                  k=k)
    kw["bias"] = bias
    kw["relu"] = bool(rng.integers(0, 2)) if relu is None else relu
    kw["raw"] = bool(rng.integers(0, 5) == 0) if raw is None else raw
    t = _acc(hw, kw["a"], kw["w"], bias, kw.get("alpha"), kw.get("k"))
    kw["mult"], kw["shift"] = requant_for(rng, hw, t)
    return kw


def _extreme_int(hw, m, k, n):
    """Every product at its maximum magnitude: -2**(a-1) * -2**(w-1), and the negative peak."""
    a_min = golden.int_range(hw.a_bits)[0]
    w_min, w_max = golden.int_range(hw.w_bits)
    a = np.full((m, k), a_min, np.int64)
    w = np.full((n, k), w_min, np.int64)
    w[1::2] = w_max                       # odd channels: -2**(a-1) * (2**(w-1)-1) < 0
    return a, w


def corner_cases(hw, rng: np.random.Generator, k_cap: int | None = None) -> list[tuple[str, dict]]:
    """Named corner cases of the contract for unit ``hw``.

    Covers the largest products at the widest K (``max_k``, or ``k_cap`` if smaller) with the
    largest bias in raw mode, saturation at both ends, round-half-up ties, ReLU, shift 0 and
    63, M/N/K not multiples of the array (XNOR: of the lanes), K = 1; log: every code and the
    zero code; XNOR: all-ones and all-zeros planes and the largest plane scales.
    """
    rows, cols = hw.rows, hw.cols
    kmax = hw.max_k if k_cap is None else min(hw.max_k, k_cap)
    pmax = max_product(hw)
    bound = golden.bias_bound(pmax, hw.max_k)
    m_odd, n_odd = rows + 1, cols + 1
    cases = []

    def add(name, n, **kw):
        kw.setdefault("bias", np.zeros(n, np.int64))
        if not kw.get("raw"):
            kw.setdefault("mult", np.full(n, 1, np.int64))
            kw.setdefault("shift", np.zeros(n, np.int64))
        cases.append((name, kw))

    if hw.unit in ("int8", "log"):
        if hw.unit == "int8":
            a, w = _extreme_int(hw, rows, kmax, n_odd)
        else:
            a = np.full((rows, kmax), golden.int_range(hw.a_bits)[0], np.int64)
            w = np.full((n_odd, kmax), 1 << (hw.bits - 1), np.int64)   # -largest magnitude
            w[1::2] = 0                                                 # +largest magnitude
        bias = np.where(np.arange(n_odd) % 2 == 0, bound, -bound).astype(np.int64)
        add("widest_k_extremes_raw", n_odd, a=a, w=w, bias=bias, raw=True)
        add("widest_k_saturate", n_odd, a=a, w=w, bias=bias,
            mult=np.full(n_odd, 65535, np.int64), shift=np.zeros(n_odd, np.int64))
        add("widest_k_shift63", n_odd, a=a, w=w, bias=bias,
            mult=np.full(n_odd, 65535, np.int64), shift=np.full(n_odd, 63, np.int64))
        k = min(kmax, 2 * rows + 1)
        a = _signed(rng, hw.a_bits, (m_odd, k))
        if hw.unit == "int8":
            w = _signed(rng, hw.w_bits, (n_odd, k))
        else:
            w = _log_codes(rng, hw, (n_odd, k))
        # shift 1..3 with mult 1: t / 2**s rounded half up, ties of both signs occur often.
        add("round_half_up", n_odd, a=a, w=w, shift=rng.integers(1, 4, n_odd),
            mult=np.ones(n_odd, np.int64))
        add("round_half_up_relu", n_odd, a=a, w=w, shift=rng.integers(1, 4, n_odd),
            mult=np.ones(n_odd, np.int64), relu=True)
        add("saturate_both_ends", n_odd, a=a, w=w, mult=np.full(n_odd, 65535, np.int64))
        add("k1", n_odd, a=a[:, :1], w=w[:, :1], bias=rng.integers(-9, 10, n_odd), raw=True)
        if hw.unit == "log":
            # Every valid code (the zero code included) in one weight row each.
            depth = golden.log_depth(hw.bits, hw.zero_code)
            top = depth if hw.zero_code else depth - 1
            codes = np.array([c for c in range(1 << hw.bits)
                              if (c & ((1 << (hw.bits - 1)) - 1)) <= top], np.int64)
            kk = min(kmax, len(codes))
            wc = np.stack([np.roll(codes, s)[:kk] for s in range(n_odd)])
            add("every_code", n_odd, a=_signed(rng, hw.a_bits, (m_odd, kk)), w=wc, raw=True)
            if hw.zero_code:
                zero = np.full((n_odd, kk), depth, np.int64)
                zero[1::2] |= 1 << (hw.bits - 1)
                add("zero_codes", n_odd, a=_signed(rng, hw.a_bits, (m_odd, kk)), w=zero,
                    bias=rng.integers(-9, 10, n_odd), raw=True)
    else:
        lanes, pa, pw = hw.lanes, hw.a_planes, hw.w_planes
        alpha_max = np.full((pw, n_odd), (1 << golden.ALPHA_BITS) - 1, np.int64)
        ones_a = np.ones((pa, m_odd, kmax), np.int64)
        # all-ones activations against all-ones / all-zeros weights, alternately
        w_bits = np.zeros((pw, n_odd, kmax), np.int64)
        w_bits[:, ::2] = 1
        bias = np.where(np.arange(n_odd) % 2 == 0, bound, -bound).astype(np.int64)
        add("widest_k_all_ones_raw", n_odd, a=_packed(ones_a), w=_packed(w_bits),
            alpha=alpha_max, k=kmax, bias=bias, raw=True)
        add("widest_k_all_zeros_saturate", n_odd, a=_packed(0 * ones_a), w=_packed(w_bits),
            alpha=alpha_max, k=kmax, bias=bias, mult=np.full(n_odd, 65535, np.int64))
        for k in sorted({1, min(kmax, lanes - 1 or 1), min(kmax, lanes + 3),
                         min(kmax, 2 * lanes + 1)}):
            kw = random_operands(hw, rng, m_odd, k, n_odd, relu=False, raw=False)
            kw["shift"] = rng.integers(1, 4, n_odd)
            kw["mult"] = np.ones(n_odd, np.int64)
            add(f"k{k}_round_half_up", n_odd, **kw)
        kw = random_operands(hw, rng, m_odd, min(kmax, lanes + 3), n_odd, relu=True, raw=False)
        kw["alpha"] = alpha_max
        kw["mult"] = np.full(n_odd, 65535, np.int64)
        kw["shift"] = np.zeros(n_odd, np.int64)
        add("saturate_relu_alpha_max", n_odd, **kw)
    return cases
