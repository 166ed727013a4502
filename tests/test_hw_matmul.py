# amaranth: UnusedElaboratable=no
"""The three matmul units in the Amaranth simulator against the golden kernels, with equality.

Every case drives the unit through the shared host protocol (lowbit.hw.driver) and compares the
reassembled output with ``Protocol.expected`` (golden kernel + ``requantize``). Shapes are kept
small (the Amaranth simulator runs a few thousand cycles per second); the Verilator testbenches
in sim/ cover large shapes. Inputs come from fixed seeds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowbit.hw.driver import Plan, Protocol
from lowbit.hw.matmul import IntMatmul, LogMatmul, XnorMatmul, make_unit
from lowbit.hw.simulate import simulate
from lowbit.hw.units import unit_kinds
from lowbit.sw import golden


def run(unit, a, w, bias=None, mult=None, shift=None, *, relu=False, raw=False, alpha=None,
        k=None, x_valid=1.0, y_ready=1.0, seed=0):
    """Simulate one matmul on ``unit``; assert equality with the golden result; return both."""
    proto = Protocol(unit)
    plan = proto.plan(a, w, bias, mult, shift, relu=relu, raw=raw, alpha=alpha, k=k)
    result = simulate(unit, plan, x_valid=x_valid, y_ready=y_ready, seed=seed)
    got = proto.assemble(plan, result.y)
    want = proto.expected(a, w, bias, mult, shift, relu=relu, raw=raw, alpha=alpha, k=k)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"RTL\n{got}\n!= golden\n{want}"
    return got, result, plan


def rand_signed(rng, bits, *shape):
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), shape)


def requant_args(rng, n, acc_max):
    """Random per-channel bias / mult / shift that map ``|acc| ~ acc_max`` to about +-2^8, so
    some outputs saturate at both ends and the rest spread over the int8 range."""
    bias = rng.integers(-(acc_max // 8), acc_max // 8 + 1, n)
    mult = rng.integers(1 << 15, 1 << 16, n)
    shift = np.clip(int(acc_max).bit_length() + 16 - 8 + rng.integers(-1, 2, n), 0, 63)
    return bias, mult, shift


# ---------------------------------------------------------------------------------------------
# Constructor validation: every message


@pytest.mark.parametrize("cls, kwargs, exc, message", [
    (IntMatmul, dict(rows=0), ValueError, "Rows must be a positive integer, not 0"),
    (IntMatmul, dict(rows=65), ValueError, "Rows must be at most 64, not 65"),
    (IntMatmul, dict(rows="4"), TypeError, "Rows must be a positive integer, not '4'"),
    (IntMatmul, dict(rows=True), TypeError, "Rows must be a positive integer, not True"),
    (LogMatmul, dict(cols=-1), ValueError, "Cols must be a positive integer, not -1"),
    (XnorMatmul, dict(cols=100), ValueError, "Cols must be at most 64, not 100"),
    (IntMatmul, dict(out_bits=1), ValueError, "Out bits must be an integer in 2..32, not 1"),
    (LogMatmul, dict(out_bits=33), ValueError, "Out bits must be an integer in 2..32, not 33"),
    (IntMatmul, dict(max_k=0), ValueError, "Max K must be a positive integer, not 0"),
    (IntMatmul, dict(max_k=2.5), TypeError, "Max K must be a positive integer, not 2.5"),
    (IntMatmul, dict(max_k=1 << 40), ValueError,
     "Max K 1099511627776 needs a 57-bit accumulator; at most 47 bits are allowed"),
    (XnorMatmul, dict(a_planes=8, w_planes=8, max_k=1 << 20), ValueError,
     "Max K 1048576 needs a 49-bit accumulator; at most 47 bits are allowed"),
    (IntMatmul, dict(a_bits=1), ValueError, "A bits must be an integer in 2..8, not 1"),
    (IntMatmul, dict(a_bits=9), ValueError, "A bits must be an integer in 2..8, not 9"),
    (IntMatmul, dict(w_bits=9), ValueError, "W bits must be an integer in 2..8, not 9"),
    (LogMatmul, dict(a_bits=0), ValueError, "A bits must be an integer in 2..8, not 0"),
    (LogMatmul, dict(bits=0), ValueError, "Bits must be an integer in 1..8, not 0"),
    (LogMatmul, dict(bits=9), ValueError, "Bits must be an integer in 1..8, not 9"),
    (LogMatmul, dict(zero_code=1), TypeError, "Zero code must be a bool, not 1"),
    (LogMatmul, dict(bits=1, zero_code=True), ValueError, "Zero code needs at least 2 bits, not 1"),
    (XnorMatmul, dict(a_planes=0), ValueError, "A planes must be an integer in 1..8, not 0"),
    (XnorMatmul, dict(w_planes=9), ValueError, "W planes must be an integer in 1..8, not 9"),
    (XnorMatmul, dict(lanes=0), ValueError, "Lanes must be an integer in 1..256, not 0"),
    (XnorMatmul, dict(lanes=257), ValueError, "Lanes must be an integer in 1..256, not 257"),
])
def test_constructor_errors(cls, kwargs, exc, message):
    with pytest.raises(exc) as info:
        cls(**kwargs)
    assert str(info.value) == message


def test_make_unit_unknown():
    with pytest.raises(ValueError) as info:
        make_unit("foo")
    assert str(info.value) == f"unknown unit 'foo' (choose from {', '.join(unit_kinds())})"


def test_unexpected_keyword():
    with pytest.raises(TypeError):
        IntMatmul(bits=4)


# ---------------------------------------------------------------------------------------------
# Widths and payload layouts (docs/hardware.md formulas)


def test_widths_come_from_the_contract():
    assert IntMatmul().acc_width == 32 == golden.int_acc_width(8, 8, 32768)
    assert IntMatmul(a_bits=4, w_bits=4).acc_width == golden.int_acc_width(4, 4, 32768)
    assert LogMatmul(bits=4).acc_width == golden.log_acc_width(4, 8, 32768)
    assert LogMatmul(bits=8, zero_code=True).acc_width == golden.log_acc_width(8, 8, 32768, True)
    assert XnorMatmul().acc_width == 33
    assert XnorMatmul(a_planes=8, w_planes=8).acc_width == 44
    assert IntMatmul(max_k=40).acc_width == golden.signed_width(2 * 40 * 16384)
    assert IntMatmul(a_bits=2, w_bits=2, max_k=1, out_bits=32).y_width == 32


@pytest.mark.parametrize("unit, params", [
    ("int8", dict(rows=4, cols=4)), ("int8", dict(rows=3, cols=5, a_bits=4, w_bits=6)),
    ("log", dict(rows=2, cols=3, bits=5)), ("xnor", dict(rows=2, cols=3, lanes=32)),
    ("xnor", dict(rows=1, cols=2, lanes=7, a_planes=3)),
])
def test_payload_widths(unit, params):
    u = make_unit(unit, **params)
    r, c = u.rows, u.cols
    if unit == "int8":
        x = r * u.a_bits + c * u.w_bits + 1
    elif unit == "log":
        x = r * u.a_bits + c * u.bits + 1
    else:
        x = (r + c) * u.lanes + c * 16 + 3 + u.lanes.bit_length() + 1
    assert u.x_layout.size == x
    assert u.cfg_layout.size == c * (u.acc_width + 16 + 6) + 2
    assert u.y_layout.size == c * max(u.acc_width, u.out_bits) + 1
    ports = {name: len(getattr(u, name).payload.as_value()) for name in ("x", "cfg", "y")}
    assert ports == {"x": x, "cfg": u.cfg_layout.size, "y": u.y_layout.size}


def test_int8_beat_layout_matches_the_documented_example():
    # docs/hardware.md: INT8 4x4, bits 0..7 = A[m0,k], 24..31 = A[m0+3,k], 32..39 = W[n0,k],
    # 56..63 = W[n0+3,k], bit 64 = last.
    proto = Protocol.for_unit("int8", rows=4, cols=4)
    a = np.array([[1], [2], [3], [-128]])
    w = np.array([[-1], [5], [6], [127]])
    plan = proto.plan(a, w, raw=True)
    (beat,) = plan.tiles[0].x
    assert beat & 0xFF == 1 and (beat >> 24) & 0xFF == 0x80
    assert (beat >> 32) & 0xFF == 0xFF and (beat >> 56) & 0xFF == 127
    assert beat >> 64 == 1


# ---------------------------------------------------------------------------------------------
# INT unit


def test_int8_random_with_gaps_and_backpressure():
    rng = np.random.default_rng(1)
    m, k, n = 5, 7, 4                       # M, N not multiples of the 2x3 array
    a, w = rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k)
    req = requant_args(rng, n, int(np.abs(a @ w.T).max()))
    got, _, _ = run(IntMatmul(rows=2, cols=3), a, w, *req, x_valid=0.7, y_ready=0.5, seed=3)
    assert (got == -128).any() and len(np.unique(got)) > 5


def test_int8_minus128_squared_raw_and_saturation():
    k = 9
    a = np.full((2, k), -128)
    w = np.array([[-128] * k, [127] * k])
    u = IntMatmul(rows=2, cols=2)
    got, _, _ = run(u, a, w, np.array([5, -5]), raw=True)
    assert got.tolist() == [[16384 * k + 5, -128 * 127 * k - 5]] * 2
    # requantize with a large scale: both ends saturate
    got, _, _ = run(u, a, w, None, np.array([65535, 65535]), np.array([0, 0]))
    assert got.tolist() == [[127, -128]] * 2
    # ReLU clamps the negative column to 0, the positive one still saturates
    got, _, _ = run(u, a, w, None, np.array([65535, 65535]), np.array([3, 3]), relu=True)
    assert got.tolist() == [[127, 0]] * 2


def test_int8_widest_k_and_bias_at_the_bounds():
    # max_k = 40: the accumulator is exactly as wide as 2 * max_k * 2^14 needs; K = max_k with
    # every product at -128 x -128 and the bias at +-bound reaches the width's edge.
    u = IntMatmul(rows=2, cols=2, max_k=40)
    bound = golden.bias_bound(16384, 40)
    a = np.full((2, 40), -128)
    w = np.stack([np.full(40, -128), np.full(40, 127)])
    got, _, _ = run(u, a, w, np.array([bound, -bound]), raw=True)
    assert got[0].tolist() == [2 * bound, -128 * 127 * 40 - bound]
    assert 2 * bound < 1 << (u.acc_width - 1)


def test_int8_relu_and_shift_extremes():
    rng = np.random.default_rng(2)
    m, k, n = 4, 6, 6
    a, w = rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k)
    bias = rng.integers(-20000, 20000, n)
    mult = np.array([65535, 1, 40000, 0, 32768, 65535])
    shift = np.array([0, 1, 17, 5, 63, 62])          # 0 (no rounding) .. 63 (everything -> 0)
    run(IntMatmul(rows=2, cols=3), a, w, bias, mult, shift, relu=True, y_ready=0.6)
    got, _, _ = run(IntMatmul(rows=2, cols=3), a, w, bias, mult, shift)
    assert (got[:, 3] == 0).all() and (got[:, 4] == 0).all()


def test_int8_k1_and_out_bits_32():
    rng = np.random.default_rng(3)
    a, w = rand_signed(rng, 8, 3, 1), rand_signed(rng, 8, 3, 1)
    run(IntMatmul(rows=2, cols=2), a, w, *requant_args(rng, 3, int(np.abs(a @ w.T).max())))
    u = IntMatmul(rows=2, cols=2, out_bits=32)
    bias = rng.integers(-1000, 1000, 3)
    got, _, _ = run(u, a, w, bias, np.full(3, 65535), np.zeros(3, np.int64))
    assert np.array_equal(got, (a @ w.T + bias) * 65535)   # nothing saturates at 32 bits


@pytest.mark.parametrize("a_bits, w_bits, out_bits", [(4, 4, 4), (6, 6, 8), (2, 8, 6), (8, 3, 8)])
def test_int_narrow_widths(a_bits, w_bits, out_bits):
    rng = np.random.default_rng(a_bits * 10 + w_bits)
    m, k, n = 3, 5, 3
    a, w = rand_signed(rng, a_bits, m, k), rand_signed(rng, w_bits, n, k)
    a[0, :] = -(1 << (a_bits - 1))                     # the most negative values
    w[0, :] = -(1 << (w_bits - 1))
    u = IntMatmul(rows=2, cols=2, a_bits=a_bits, w_bits=w_bits, out_bits=out_bits)
    run(u, a, w, *requant_args(rng, n, int(np.abs(a @ w.T).max())), y_ready=0.7)
    run(u, a, w, rng.integers(-100, 100, n), raw=True)


@pytest.mark.parametrize("a_bits, w_bits", [(8, 8), (8, 2), (2, 3), (5, 7), (8, 5)])
def test_int_lut_form_of_the_pe(a_bits, w_bits):
    """The PE form built for LUT logic (the weight's halves multiplied apart, their partial
    products registered, then summed) gives the golden result, every corner of both operands
    included."""
    rng = np.random.default_rng(40 + a_bits * 10 + w_bits)
    lo_a, lo_w = -(1 << (a_bits - 1)), -(1 << (w_bits - 1))
    a_vals = np.array([lo_a, lo_a + 1, -1, 0, 1, -lo_a - 1])
    w_vals = np.array([lo_w, lo_w + 1, -1, 0, 1, -lo_w - 1])
    a = np.concatenate([np.repeat(a_vals, 6)[None].repeat(3, 0),
                        rand_signed(rng, a_bits, 3, 8)], axis=1)    # every pair of corners
    w = np.concatenate([np.tile(w_vals, 6)[None].repeat(2, 0),
                        rand_signed(rng, w_bits, 2, 8)], axis=1)
    u = IntMatmul(rows=2, cols=2, a_bits=a_bits, w_bits=w_bits, out_bits=32)
    assert u.pe.multipliers() == "dsp"          # what simulation builds by default
    u.pe.multipliers = lambda: "lut"
    for k in range(1, a.shape[1] + 1, 7):       # tiles of one and of many beats
        run(u, a[:, :k], w[:, :k], rng.integers(-100, 100, 2), raw=True, y_ready=0.8)


def test_int8_back_to_back_tiles_throughput():
    """Drain overlaps accumulation: cycles = x beats + a fixed pipeline latency."""
    rng = np.random.default_rng(4)
    m, k, n = 8, 8, 8
    u = IntMatmul(rows=2, cols=2)
    a, w = rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k)
    _, result, plan = run(u, a, w, *requant_args(rng, n, int(np.abs(a @ w.T).max())))
    assert plan.x_beats == m * k * n // 4 == 128
    # input register, PE operands, product, accumulator, bank, the drain's stages; then the
    # second row
    assert u.accumulate_latency + 1 + u.drain_latency == 12
    assert result.cycles == plan.x_beats + 12 + 1, result.cycles


def test_int8_tiles_with_different_k_in_one_stream():
    """K may change from tile to tile: two matmuls' tiles back to back in one simulation."""
    rng = np.random.default_rng(5)
    u = IntMatmul(rows=2, cols=2)
    proto = Protocol(u)
    shapes = [(2, 1, 2), (2, 5, 4), (3, 2, 2)]
    args, plans = [], []
    for m, k, n in shapes:
        a, w = rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k)
        req = requant_args(rng, n, 1 << 14)
        args.append((a, w, *req))
        plans.append(proto.plan(a, w, *req, relu=bool(len(plans) % 2)))
    joined = Plan(m=0, n=0, rows=2, tiles=[t for p in plans for t in p.tiles])
    result = simulate(u, joined, y_ready=0.5, seed=9)
    start = 0
    for i, (p, arg) in enumerate(zip(plans, args)):
        got = proto.assemble(p, result.y[start:start + p.y_beats])
        start += p.y_beats
        assert np.array_equal(got, proto.expected(*arg, relu=bool(i % 2)))


def test_int8_single_pe():
    rng = np.random.default_rng(6)
    a, w = rand_signed(rng, 8, 2, 4), rand_signed(rng, 8, 3, 4)
    run(IntMatmul(rows=1, cols=1), a, w, *requant_args(rng, 3, 1 << 15), y_ready=0.5)


# ---------------------------------------------------------------------------------------------
# Log unit


def random_codes(rng, bits, zero_code, n, k):
    depth = golden.log_depth(bits, zero_code)
    e = rng.integers(0, depth + (1 if zero_code else 0), (n, k))
    sign = rng.integers(0, 2, (n, k))
    return (sign << (bits - 1)) | e if bits > 1 else sign


@pytest.mark.parametrize("bits, zero_code, a_bits", [
    (1, False, 8), (2, True, 8), (3, False, 8), (4, False, 8), (4, True, 8), (5, False, 8),
    (8, True, 8), (4, False, 4),
])
def test_log_random(bits, zero_code, a_bits):
    rng = np.random.default_rng(100 + bits * 2 + zero_code)
    m, k, n = 3, 6, 3
    a = rand_signed(rng, a_bits, m, k)
    a[0, 0] = -(1 << (a_bits - 1))
    codes = random_codes(rng, bits, zero_code, n, k)
    u = LogMatmul(rows=2, cols=2, bits=bits, a_bits=a_bits, zero_code=zero_code)
    depth = golden.log_depth(bits, zero_code)
    run(u, a, codes, *requant_args(rng, n, k << (a_bits - 1 + depth - 2)), y_ready=0.7, seed=bits)
    run(u, a, codes, rng.integers(-1000, 1000, n), raw=True)


def test_log_largest_shift_and_negate():
    # -128 times the largest magnitude (2^15, code 0 of 5-bit codes) and its negative code.
    u = LogMatmul(rows=2, cols=2, bits=5)
    a = np.array([[-128, -128, 127], [127, -1, 0]])
    codes = np.array([[0, 0, 0], [0b10000, 0b10000, 0b10000]])    # +2^15, -2^15
    got, _, _ = run(u, a, codes, raw=True)
    assert got.tolist() == [[-(1 << 23) + (127 << 15), (1 << 23) - (127 << 15)],
                            [(127 - 1) << 15, -((127 - 1) << 15)]]


def test_log_zero_codes():
    # With the zero code every weight 0 (either sign bit): the result is the bias alone.
    bits, depth = 4, golden.log_depth(4, True)
    u = LogMatmul(rows=2, cols=2, bits=bits, zero_code=True)
    a = np.array([[-128, 127, 5], [3, -7, 100]])
    codes = np.array([[depth, depth | 0b1000, depth], [depth | 0b1000, depth, depth]])
    got, _, _ = run(u, a, codes, np.array([7, -9]), raw=True)
    assert got.tolist() == [[7, -9], [7, -9]]


# ---------------------------------------------------------------------------------------------
# XNOR unit


def packed(signs):
    return golden.pack_bits(torch.as_tensor(signs))


def rand_planes(rng, planes, rows, k):
    return packed(rng.integers(0, 2, (planes, rows, k)) * 2 - 1)


@pytest.mark.parametrize("a_planes, w_planes, lanes, k", [
    (1, 1, 8, 13), (1, 1, 32, 70), (2, 3, 5, 11), (3, 2, 16, 16), (1, 2, 7, 1), (8, 1, 4, 6),
])
def test_xnor_random(a_planes, w_planes, lanes, k):
    rng = np.random.default_rng(200 + a_planes * 10 + w_planes + lanes)
    m, n = 3, 3
    aw, ww = rand_planes(rng, a_planes, m, k), rand_planes(rng, w_planes, n, k)
    alpha = rng.integers(0, 1 << 16, (w_planes, n))
    u = XnorMatmul(rows=2, cols=2, a_planes=a_planes, w_planes=w_planes, lanes=lanes)
    typical = golden.xnor_max_product(a_planes, w_planes) * int(np.sqrt(k)) // 2
    run(u, aw, ww, *requant_args(rng, n, typical), alpha=alpha, k=k, y_ready=0.7,
        seed=lanes)
    run(u, aw, ww, rng.integers(-1000, 1000, n), raw=True, alpha=alpha, k=k)


def test_xnor_all_ones_all_zeros_planes_and_masked_padding():
    # Activations all +1 (bits 1) or all -1 (bits 0) against weights all +1 / all -1; K = 13
    # is not a multiple of 8 lanes, so the last beat has 5 valid lanes and 3 masked ones.
    k = 13
    a_signs = np.array([[[1] * k, [-1] * k]])            # [Pa=1, M=2, K]
    w_signs = np.array([[[1] * k, [-1] * k]])            # [Pw=1, N=2, K]
    alpha = np.array([[3, 65535]])
    u = XnorMatmul(rows=2, cols=2, lanes=8)
    got, _, _ = run(u, packed(a_signs), packed(w_signs), raw=True, alpha=alpha, k=k)
    assert got.tolist() == [[3 * k, -65535 * k], [-3 * k, 65535 * k]]


def test_xnor_widest_k_all_planes_agree():
    # Every (i, j) pair agrees on every bit, alpha at its maximum, K = max_k, bias at the bound:
    # t = 2 * max_k * Pmax, the accumulator's edge.
    pa, pw, max_k = 2, 2, 10
    u = XnorMatmul(rows=1, cols=2, a_planes=pa, w_planes=pw, lanes=4, max_k=max_k)
    pmax = golden.xnor_max_product(pa, pw)
    bound = golden.bias_bound(pmax, max_k)
    a = packed(np.ones((pa, 1, max_k), np.int64))
    w = packed(np.stack([np.ones((2, max_k), np.int64), -np.ones((2, max_k), np.int64)], 1))
    alpha = np.full((pw, 2), 65535)
    got, _, _ = run(u, a, w, np.array([bound, -bound]), raw=True, alpha=alpha, k=max_k)
    assert got.tolist() == [[2 * bound, -2 * bound]]
    assert 2 * bound < 1 << (u.acc_width - 1)


def test_xnor_requantize_relu_backpressure():
    rng = np.random.default_rng(7)
    k, m, n = 20, 4, 4
    aw, ww = rand_planes(rng, 2, m, k), rand_planes(rng, 2, n, k)
    alpha = rng.integers(0, 1 << 16, (2, n))
    bias, mult, shift = requant_args(rng, n, 3 * 2 * 65535 * 4)
    run(XnorMatmul(rows=2, cols=2, a_planes=2, w_planes=2, lanes=8), aw, ww, bias, mult, shift,
        relu=True, alpha=alpha, k=k, y_ready=0.3, x_valid=0.8, seed=11)


# ---------------------------------------------------------------------------------------------
# Mid-size runs on a 4x4 array: full throughput (drain hidden behind accumulation)


@pytest.mark.parametrize("unit", ["int8", "log", "xnor"])
def test_mid_size_full_throughput(unit):
    rng = np.random.default_rng(77)
    m, n, k = 8, 8, 64
    if unit == "int8":
        u = IntMatmul(rows=4, cols=4)
        a, w, extra = rand_signed(rng, 8, m, k), rand_signed(rng, 8, n, k), {}
        typical = int(np.abs(a @ w.T).max())
    elif unit == "log":
        u = LogMatmul(rows=4, cols=4, bits=4)
        a, w, extra = rand_signed(rng, 8, m, k), random_codes(rng, 4, False, n, k), {}
        typical = k << 12
    else:
        k = 200                                     # 7 chunks of 32 lanes, the last 8 valid
        u = XnorMatmul(rows=4, cols=4, a_planes=2, w_planes=2)
        a, w = rand_planes(rng, 2, m, k), rand_planes(rng, 2, n, k)
        extra = dict(alpha=rng.integers(0, 1 << 16, (2, n)), k=k)
        typical = 3 * 2 * 65535 * 20
    _, result, plan = run(u, a, w, *requant_args(rng, n, typical), **extra)
    # one x beat per cycle, then the last tile's pipeline latency and its remaining rows
    latency = u.accumulate_latency + 1 + u.drain_latency
    assert result.cycles == plan.x_beats + latency + u.rows - 1, (result.cycles, plan.x_beats)


# ---------------------------------------------------------------------------------------------
# Random sweep: random parameters, shapes and handshake patterns for every unit


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("unit", ["int8", "log", "xnor"])
def test_random_sweep(unit, seed):
    rng = np.random.default_rng(1000 * len(unit) + seed)
    rows, cols = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    m, n, k = int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(1, 40))
    relu, raw = bool(rng.integers(0, 2)), bool(rng.integers(0, 4) == 0)
    out_bits = int(rng.choice([4, 8, 8, 16]))
    if unit == "int8":
        ab, wb = int(rng.integers(2, 9)), int(rng.integers(2, 9))
        u = IntMatmul(rows=rows, cols=cols, a_bits=ab, w_bits=wb, out_bits=out_bits)
        a, w, extra = rand_signed(rng, ab, m, k), rand_signed(rng, wb, n, k), {}
        typical = int(np.abs(a @ w.T).max()) + 1
    elif unit == "log":
        bits, ab = int(rng.integers(1, 9)), int(rng.integers(2, 9))
        zc = bits > 1 and bool(rng.integers(0, 2))
        u = LogMatmul(rows=rows, cols=cols, bits=bits, a_bits=ab, zero_code=zc, out_bits=out_bits)
        a, w, extra = rand_signed(rng, ab, m, k), random_codes(rng, bits, zc, n, k), {}
        typical = k << (ab + golden.log_depth(bits, zc) - 3)
    else:
        pa, pw, lanes = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 20))
        u = XnorMatmul(rows=rows, cols=cols, a_planes=pa, w_planes=pw, lanes=lanes,
                       out_bits=out_bits)
        a, w = rand_planes(rng, pa, m, k), rand_planes(rng, pw, n, k)
        extra = dict(alpha=rng.integers(0, 1 << 16, (pw, n)), k=k)
        typical = golden.xnor_max_product(pa, pw) * int(np.sqrt(k) + 1) // 2
    bias, mult, shift = requant_args(rng, n, typical)
    run(u, a, w, bias, None if raw else mult, None if raw else shift, relu=relu, raw=raw,
        x_valid=float(rng.choice([1.0, 0.6])), y_ready=float(rng.choice([1.0, 0.5, 0.2])),
        seed=seed, **extra)


# ---------------------------------------------------------------------------------------------
# Driver errors


def test_driver_rejects_bad_input():
    proto = Protocol.for_unit("int8", rows=2, cols=2, max_k=4)
    a, w = np.zeros((2, 5), np.int64), np.zeros((2, 5), np.int64)
    with pytest.raises(ValueError, match=r"K must be in 1\.\.4, not 5"):
        proto.plan(a, w, raw=True)
    with pytest.raises(ValueError, match="mult and shift are required unless raw=True"):
        proto.plan(a[:, :4], w[:, :4])
    with pytest.raises(ValueError, match="alpha and k apply to the xnor unit only"):
        proto.plan(a[:, :4], w[:, :4], raw=True, k=4)
    with pytest.raises(ValueError, match="activations has values outside"):
        proto.plan(a[:, :4] + 200, w[:, :4], raw=True)
    with pytest.raises(TypeError, match="activations must hold integers"):
        proto.plan(a[:, :4] * 0.5, w[:, :4], raw=True)
    with pytest.raises(ValueError, match="shift has values outside 0..63"):
        proto.plan(a[:, :4], w[:, :4], None, np.ones(2, np.int64), np.full(2, 64))
    x = Protocol.for_unit("xnor", rows=2, cols=2, a_planes=1)
    with pytest.raises(ValueError, match="exceed the unit's 1 / 1"):
        x.plan(packed(np.ones((2, 2, 4), np.int64)), packed(np.ones((1, 2, 4), np.int64)),
               raw=True, alpha=np.ones((1, 2), np.int64), k=4)


def test_assemble_checks_beats():
    proto = Protocol.for_unit("int8", rows=2, cols=2)
    plan = proto.plan(np.ones((2, 3), np.int64), np.ones((2, 3), np.int64), raw=True)
    layout = proto.unit.y_layout
    last_bit = 1 << layout["last"].offset
    with pytest.raises(ValueError, match="expected 2 y beats"):
        proto.assemble(plan, [0])
    with pytest.raises(ValueError, match="'last' flags"):
        proto.assemble(plan, [0, 0])
    got = proto.assemble(plan, [3 | (5 << proto.unit.y_width), 7 | last_bit])
    assert got.tolist() == [[3, 5], [7, 0]]


# --- the XNOR PE's popcount (word-wide SWAR levels + adder tree) --------------------------------

@pytest.mark.parametrize("pipelined", [False, True])
@pytest.mark.parametrize("synthesis", [False, True])
@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 9, 31, 32, 33, 64, 100, 256])
def test_popcount_counts_ones(width, synthesis, pipelined):
    """``_popcount`` (both forms, combinational and with its register stage) equals the number
    of ones for random words and the corner words."""
    from amaranth import C, Elaboratable, Module, Signal
    from amaranth.sim import Simulator

    from lowbit.hw.matmul import _popcount, _swar_masks

    class Dut(Elaboratable):
        def __init__(self):
            self.word = Signal(width)
            self.count = Signal(width.bit_length())

        def elaborate(self, platform):
            m = Module()
            masks = _swar_masks(m, width)
            m.d.comb += self.count.eq(_popcount(m, self.word, width, masks, "pop",
                                                synthesis=synthesis,
                                                en=C(1, 1) if pipelined else None))
            return m

    rng = np.random.default_rng(width)
    full = (1 << width) - 1
    words = [0, full, 1, 1 << (width - 1), full ^ 1, 0x5555_5555_5555 & full, full >> 1]
    words += [int(rng.integers(0, 2**62)) ** 5 & full for _ in range(40)]
    words += [sum(1 << int(i) for i in rng.choice(width, size=k, replace=False))
              for k in rng.integers(0, width + 1, size=20)]
    dut = Dut()
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    got = []

    before = []

    async def bench(ctx):
        for word in words:
            ctx.set(dut.word, word)
            before.append(ctx.get(dut.count))   # pipelined: still the previous word's count
            await ctx.tick()
            got.append(ctx.get(dut.count))

    sim.add_testbench(bench)
    sim.run()
    counts = [bin(w).count("1") for w in words]
    assert got == counts
    assert before[1:] == (counts[:-1] if pipelined else counts[1:])

