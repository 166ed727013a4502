"""Operands for verifying the matmul units: random matmuls and the corner cases of the contract.

Shared by the cocotb testbenches (sim/tb_matmul.py), the harness tests and ``lowbit verify``.
Every function returns the keyword arguments of :meth:`lowbit.hw.driver.Protocol.plan` for the
unit description it is given (``a, w, bias, mult, shift, relu, raw`` and the unit's further
operands, e.g. XNOR's ``alpha, k``), drawn from a ``numpy.random.Generator`` so a seed fixes
everything. The operand formats come from the description (``random_operands``,
``extreme_operands``, ``special_cases``); what is common to every unit (bias, requantization,
rounding and saturation cases) is here.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit.sw import golden

__all__ = ["random_operands", "corner_cases", "requant_for"]


def _acc(hw, kw) -> np.ndarray:
    extra = {k: kw[k] for k in hw.extra_operands}
    return hw.golden_accumulator(hw.check_operands(kw["a"], kw["w"], extra), kw["bias"])


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
    """A random matmul ``[M, K] x [N, K]`` for the unit described by ``hw`` (its full operand
    ranges). ``relu`` / ``raw`` default to a random choice (raw one time in five)."""
    bias_mag = min(hw.bias_bound, max(1, k * hw.max_product // 4))
    kw = {"bias": rng.integers(-bias_mag, bias_mag + 1, n, dtype=np.int64)}
    kw.update(hw.random_operands(rng, m, k, n))
    kw["relu"] = bool(rng.integers(0, 2)) if relu is None else relu
    kw["raw"] = bool(rng.integers(0, 5) == 0) if raw is None else raw
    kw["mult"], kw["shift"] = requant_for(rng, hw, _acc(hw, kw))
    return kw


def corner_cases(hw, rng: np.random.Generator, k_cap: int | None = None) -> list[tuple[str, dict]]:
    """Named corner cases of the contract for the unit described by ``hw``.

    Covers the largest products at the widest K (``max_k``, or ``k_cap`` if smaller) with the
    largest bias in raw mode, saturation at both ends, shift 63, round-half-up ties, ReLU, M/N
    not multiples of the array, K = 1, and the unit's own cases (log: every code and the zero
    code; XNOR: all-zeros planes, K around the lane count, the largest plane scales).
    """
    rows, cols = hw.rows, hw.cols
    kmax = hw.max_k if k_cap is None else min(hw.max_k, k_cap)
    bound = hw.bias_bound
    m_odd, n_odd = rows + 1, cols + 1
    cases = []

    def add(name, n, **kw):
        kw.setdefault("bias", np.zeros(n, np.int64))
        if not kw.get("raw"):
            kw.setdefault("mult", np.full(n, 1, np.int64))
            kw.setdefault("shift", np.zeros(n, np.int64))
        cases.append((name, kw))

    ext = hw.extreme_operands(rows, kmax, n_odd)
    bias = np.where(np.arange(n_odd) % 2 == 0, bound, -bound).astype(np.int64)
    big = np.full(n_odd, 65535, np.int64)
    add("widest_k_extremes_raw", n_odd, **ext, bias=bias, raw=True)
    add("widest_k_saturate", n_odd, **ext, bias=bias, mult=big, shift=np.zeros(n_odd, np.int64))
    add("widest_k_shift63", n_odd, **ext, bias=bias, mult=big, shift=np.full(n_odd, 63, np.int64))
    ops = hw.random_operands(rng, m_odd, min(kmax, 2 * rows + 1), n_odd)
    # shift 1..3 with mult 1: t / 2**s rounded half up, ties of both signs occur often.
    add("round_half_up", n_odd, **ops, shift=rng.integers(1, 4, n_odd),
        mult=np.ones(n_odd, np.int64))
    add("round_half_up_relu", n_odd, **ops, shift=rng.integers(1, 4, n_odd),
        mult=np.ones(n_odd, np.int64), relu=True)
    add("saturate_both_ends", n_odd, **ops, mult=big)
    add("k1", n_odd, **hw.random_operands(rng, m_odd, 1, n_odd),
        bias=rng.integers(-9, 10, n_odd), raw=True)
    for name, kw in hw.special_cases(rng, kmax, m_odd, n_odd):
        add(name, n_odd, **kw)
    return cases
