"""The golden kernels (sw/golden.py) against independent slow references.

Every reference here is written with plain Python integers (or exact fractions) and loops, straight
from the formulas of docs/numerics.md, so it shares no code and no vectorisation trick with the
kernels it checks. Inputs come from fixed seeds; results are compared with equality.

This file imports only torch and lowbit.sw.golden (no amaranth, no cocotb) so it also runs on a
CUDA machine that has nothing else installed (the ``gpu`` test at the end).
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
import torch

from lowbit.sw import golden as g


def T(x):
    """A list (of lists) of Python ints -> int64 tensor."""
    return torch.tensor(x, dtype=torch.int64)


def rand_signed(rng, bits, *shape):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if len(shape) == 1:
        return [rng.randint(lo, hi) for _ in range(shape[0])]
    return [rand_signed(rng, bits, *shape[1:]) for _ in range(shape[0])]


# ---------------------------------------------------------------------------------------------
# Independent references (plain Python ints, loops)


def ref_matmul(a, w, bias=None):
    """acc[m][n] = sum_k a[m][k] * w[n][k] + bias[n], Python ints."""
    out = []
    for row in a:
        out_row = []
        for n, wrow in enumerate(w):
            s = 0
            for x, y in zip(row, wrow):
                s += x * y
            out_row.append(s + (bias[n] if bias is not None else 0))
        out.append(out_row)
    return out


def ref_log_value(code, bits, zero_code=False):
    """Integer weight of one log code, from the table in numerics.md."""
    sign = code >> (bits - 1)
    e = code & ((1 << (bits - 1)) - 1)
    depth = min(2 ** (bits - 1), 16) - (1 if zero_code else 0)
    if zero_code and e == depth:
        return 0
    assert e < depth, "reference got an invalid code"
    mag = 2 ** (depth - 1 - e)
    return -mag if sign else mag


def ref_log_index(mag: Fraction, depth: int, zero_code: bool) -> int:
    """Exponent index of a magnitude |r|/S in [0, 1], exactly (rationals, no log2).

    ``e = floor(log2(mag * 4/3))`` clipped to ``[-(depth-1), 0]`` means: the smallest index
    ``i`` with ``mag >= 3/4 * 2**-i`` (ties go to the larger magnitude), else the deepest.
    """
    if zero_code and mag < Fraction(1, 2 ** depth):    # below half of 2**-(depth-1)
        return depth
    for i in range(depth):
        if mag >= Fraction(3, 4) / 2 ** i:
            return i
    return depth - 1


def ref_pack(bits_row):
    """One row of 0/1 bits -> list of 32-bit words, element k at bit k % 32 of word k // 32."""
    words = [0] * ((len(bits_row) + 31) // 32)
    for k, b in enumerate(bits_row):
        words[k // 32] |= b << (k % 32)
    return words


def ref_popcount_dot(a_words, w_words, k):
    """2 * popcount(xnor(a, w) over the first k bits) - k, bit by bit."""
    agree = 0
    for i in range(k):
        ab = (a_words[i // 32] >> (i % 32)) & 1
        wb = (w_words[i // 32] >> (i % 32)) & 1
        agree += ab == wb
    return 2 * agree - k


def ref_requantize(t, mult, shift, out_bits=8, relu=False):
    p = t * mult
    r = (p + (1 << (shift - 1))) >> shift if shift else p     # Python >> floors
    if relu:
        r = max(r, 0)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return min(max(r, lo), hi)


# ---------------------------------------------------------------------------------------------
# INT unit


@pytest.mark.parametrize("bits,seed", [(8, 0), (8, 1), (6, 2), (4, 3), (2, 4)])
def test_int_matmul_random(bits, seed):
    rng = random.Random(seed)
    m, k, n = 5, 77, 6
    a = rand_signed(rng, bits, m, k)
    w = rand_signed(rng, bits, n, k)
    bound = g.bias_bound(g.int_max_product(bits, bits), g.DEFAULT_MAX_K)
    bias = [rng.randint(-bound, bound) for _ in range(n)]
    got = g.int_matmul(T(a), T(w), T(bias), a_bits=bits, w_bits=bits)
    assert got.dtype == torch.int64
    assert got.tolist() == ref_matmul(a, w, bias)
    assert g.int_matmul(T(a), T(w), a_bits=bits, w_bits=bits).tolist() == ref_matmul(a, w)


def test_int_matmul_mixed_widths_and_batch():
    rng = random.Random(5)
    a = [rand_signed(rng, 3, 4, 19) for _ in range(2)]
    w = rand_signed(rng, 7, 3, 19)
    got = g.int_matmul(T(a), T(w), a_bits=3, w_bits=7)
    assert got.shape == (2, 4, 3)
    assert got.tolist() == [ref_matmul(x, w) for x in a]


def test_int_matmul_minus128_squared_at_widest_k():
    """-128 x -128 everywhere at K = max_k plus the largest bias: exactly 2**30, fits int32."""
    k = g.DEFAULT_MAX_K
    a = torch.full((2, k), -128, dtype=torch.int64)
    w = torch.full((3, k), -128, dtype=torch.int64)
    w[1] = 127
    w[2, ::2] = 127
    bound = g.bias_bound(g.int_max_product(8, 8), k)
    assert bound == 2 ** 29
    bias = T([bound, -bound, 0])
    got = g.int_matmul(a, w, bias).tolist()
    want = ref_matmul(a.tolist(), w.tolist(), bias.tolist())
    assert got == want
    assert got[0][0] == 2 ** 30
    assert got[0][1] == -128 * 127 * k - 2 ** 29
    assert g.int_acc_width(8, 8, k) == 32
    lo, hi = g.int_range(32)
    assert all(lo <= v <= hi for row in got for v in row)


def test_int_matmul_widest_k_random_extremes():
    rng = random.Random(6)
    k = g.DEFAULT_MAX_K
    a = [[rng.choice((-128, 127, -127, 0, 1)) for _ in range(k)] for _ in range(2)]
    w = [[rng.choice((-128, 127, -1)) for _ in range(k)] for _ in range(2)]
    assert g.int_matmul(T(a), T(w)).tolist() == ref_matmul(a, w)


def test_accumulator_widths_match_contract():
    # docs/numerics.md states these widths; the contract (numerics.md) and the code agree.
    assert g.int_acc_width() == 32
    assert g.log_acc_width(4, max_k=4096) == 29
    assert g.log_acc_width(5) == 40
    assert g.xnor_acc_width(1, 1) == 33
    assert g.xnor_acc_width(8, 8) == 44
    for bits in range(1, 9):
        assert g.log_acc_width(bits) <= g.ACC_MAX_BITS
    assert g.signed_width(0) == 2 and g.signed_width(1) == 2 and g.signed_width(128) == 9
    assert g.signed_width(127) == 8


def test_bias_bounds():
    k = 10
    a = T([[-128] * k])
    w = T([[-128] * k])
    bound = g.bias_bound(g.int_max_product(8, 8), 16)
    assert g.int_matmul(a, w, T([bound]), max_k=16).item() == k * 16384 + bound
    assert g.int_matmul(a, w, T([-bound]), max_k=16).item() == k * 16384 - bound
    with pytest.raises(ValueError, match=r"bias has values outside -262144\.\.262144"):
        g.int_matmul(a, w, T([bound + 1]), max_k=16)
    with pytest.raises(ValueError, match=r"bias has values outside"):
        g.int_matmul(a, w, T([-bound - 1]), max_k=16)


# ---------------------------------------------------------------------------------------------
# Log codes


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("zero_code", [False, True])
def test_log_values_every_code(bits, zero_code):
    if zero_code and bits == 1:
        with pytest.raises(ValueError, match="a zero code needs at least 2 bits"):
            g.log_depth(1, True)
        return
    depth = min(2 ** (bits - 1), 16) - zero_code
    top = depth if zero_code else depth - 1
    valid = [c for c in range(2 ** bits) if (c & ((1 << (bits - 1)) - 1)) <= top]
    got = g.log_weight_values(T(valid), bits, zero_code).tolist()
    assert got == [ref_log_value(c, bits, zero_code) for c in valid]
    invalid = [c for c in range(2 ** bits) if c not in valid]
    for c in invalid:
        with pytest.raises(ValueError, match=r"log codes have exponent index \d+ > \d+, invalid"):
            g.log_weight_values(T([c]), bits, zero_code)
    if zero_code:  # both signs of the zero code are 0
        assert g.log_weight_values(T([top, top | 1 << (bits - 1)]), bits, True).tolist() == [0, 0]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("zero_code", [False, True])
def test_log_matmul_random(bits, zero_code):
    if zero_code and bits == 1:
        return
    rng = random.Random(100 + bits)
    depth = g.log_depth(bits, zero_code)
    top = depth if zero_code else depth - 1
    m, k, n = 3, 41, 4

    def code():
        return (rng.randint(0, 1) << (bits - 1)) | rng.randint(0, top)

    a = rand_signed(rng, 8, m, k)
    a[0][:4] = [-128, -128, 127, -128]
    codes = [[code() for _ in range(k)] for _ in range(n)]
    codes[0][:4] = [(1 << (bits - 1))] * 4          # the largest negative magnitude
    pmax = g.log_max_product(8, bits, zero_code)
    bias = [rng.randint(-pmax * 100, pmax * 100) for _ in range(n)]
    wv = [[ref_log_value(c, bits, zero_code) for c in row] for row in codes]
    # The product is a shift: check that too, independently of the multiply.
    for row_c, row_v in zip(codes, wv):
        for c, v in zip(row_c, row_v):
            e = c & ((1 << (bits - 1)) - 1)
            if v:
                assert abs(v) == 1 << (depth - 1 - e)
    got = g.log_matmul(T(a), T(codes), T(bias), bits=bits, zero_code=zero_code)
    assert got.tolist() == ref_matmul(a, wv, bias)


def test_log_matmul_widest_k_extremes():
    """4-bit codes at max_k = 4096: every product -128 * -2**7 plus the largest bias."""
    bits, k = 4, 4096
    a = torch.full((1, k), -128, dtype=torch.int64)
    codes = torch.full((2, k), 0b1000, dtype=torch.int64)   # sign 1, index 0: -2**7
    codes[1] = 0b0111                                        # +2**0
    pmax = g.log_max_product(8, bits)
    assert pmax == 128 * 128
    bias = T([k * pmax, -k * pmax])
    got = g.log_matmul(a, codes, bias, bits=bits, max_k=k).tolist()
    assert got == [[2 * k * pmax, -128 * k - k * pmax]]
    assert got[0][0] < 2 ** (g.log_acc_width(bits, max_k=k) - 1)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("zero_code", [False, True])
def test_log_quantize_against_exact_reference(bits, zero_code):
    if zero_code and bits == 1:
        return
    rng = random.Random(200 + bits)
    depth = g.log_depth(bits, zero_code)
    # S = 2.0 exactly (one element is the maximum) so |r|/S is exact and the reference can
    # work with the exact rational value of each float.
    w = [rng.uniform(-2.0, 2.0) * rng.choice((1, 1, 2 ** -rng.randint(0, 18))) for _ in range(300)]
    w += [2.0, -2.0, 0.0, -0.0, 1.5, -1.5, 0.75, 0.375 * 2 ** -3]
    codes, s = g.log_quantize(torch.tensor(w, dtype=torch.float64), bits, zero_code=zero_code)
    assert s == 2.0
    for x, c in zip(w, codes.tolist()):
        idx = ref_log_index(abs(Fraction(x)) / 2, depth, zero_code)
        assert c == (int(x < 0) << (bits - 1)) | idx, (x, c)


@pytest.mark.parametrize("bits", [3, 4, 5, 8])
def test_log_quantize_rounding_point_is_four_thirds(bits):
    """The midpoint 3/4 * 2**-i rounds to the larger magnitude; the next float below does not."""
    depth = g.log_depth(bits)
    for i in range(depth - 1):
        mid = 0.75 * 2.0 ** -i
        below = math.nextafter(mid, 0.0)
        above = math.nextafter(mid, 1.0)
        w = torch.tensor([1.0, mid, below, above, -mid, -below], dtype=torch.float64)
        codes, s = g.log_quantize(w, bits)
        neg = 1 << (bits - 1)
        assert codes.tolist() == [0, i, i + 1, i, neg | i, neg | (i + 1)], i
    # Values far below the deepest magnitude clip to it (no zero code), and 0 does too.
    codes, _ = g.log_quantize(torch.tensor([1.0, 1e-30, 0.0]), bits)
    assert codes.tolist()[1:] == [depth - 1, depth - 1]


def test_log_quantize_zero_code_threshold():
    bits = 4
    depth = g.log_depth(bits, zero_code=True)          # 7 magnitudes + zero
    half = 2.0 ** -(depth - 1) / 2
    w = torch.tensor([1.0, half, math.nextafter(half, 0.0), 0.0, -0.0], dtype=torch.float64)
    codes, _ = g.log_quantize(w, bits, zero_code=True)
    assert codes.tolist() == [0, depth - 1, depth, depth, depth]
    assert g.log_weight_values(codes, bits, True).tolist()[2:] == [0, 0, 0]


def test_log_quantize_given_scale_clips_and_b1_is_sign():
    codes, s = g.log_quantize(torch.tensor([3.0, -0.1, 0.0, -7.0]), 1, scale=1.0)
    assert s == 1.0 and codes.tolist() == [0, 1, 0, 1]
    codes, s = g.log_quantize(torch.tensor([3.0, -0.5, 0.2]), 3, scale=1.0)
    assert codes.tolist() == [0, 0b100 | 1, 2]
    codes, s = g.log_quantize(torch.zeros(4), 4)             # all zero: scale 1, deepest code
    assert s == 1.0 and codes.tolist() == [7] * 4


@pytest.mark.parametrize("bits", [2, 4])
def test_log_quantize_refinement(bits):
    """Each refinement step is S <- sum(a*w) / sum(a*a) with a = Q(w)/S, then re-quantize."""
    rng = random.Random(300 + bits)
    w = torch.tensor([rng.gauss(0.0, 1.0) for _ in range(500)], dtype=torch.float64)
    depth = g.log_depth(bits)
    codes0, s0 = g.log_quantize(w, bits)
    assert s0 == float(w.abs().max())
    a = [ref_log_value(c, bits) * 2.0 ** (1 - depth) for c in codes0.tolist()]
    s1_ref = math.fsum(x * y for x, y in zip(a, w.tolist())) / math.fsum(x * x for x in a)
    codes1, s1 = g.log_quantize(w, bits, refine_iters=1)
    assert s1 == s1_ref                # fsum: correctly rounded, independent of order
    assert torch.equal(codes1, g.log_quantize(w, bits, scale=s1)[0])

    def err(codes, s):
        q = g.log_weight_values(codes, bits).to(torch.float64) * s * 2.0 ** (1 - depth)
        return float(((q - w) ** 2).sum())
    # The least-squares scale cannot be worse for the codes it was fitted to.
    assert err(codes0, s1) <= err(codes0, s0)


def test_log_quantize_refinement_2d():
    """Weight matrices (not only vectors) refine; the scale equals the flattened vector's."""
    rng = random.Random(310)
    w = torch.tensor([[rng.gauss(0.0, 1.0) for _ in range(40)] for _ in range(7)],
                     dtype=torch.float64)
    codes, s = g.log_quantize(w, 4, refine_iters=2)
    flat_codes, flat_s = g.log_quantize(w.flatten(), 4, refine_iters=2)
    assert s == flat_s
    assert torch.equal(codes.flatten(), flat_codes)
    assert codes.shape == w.shape


# ---------------------------------------------------------------------------------------------
# Packing, XNOR-popcount, binary coding


@pytest.mark.parametrize("k", [1, 31, 32, 33, 64, 95, 200])
def test_pack_unpack_round_trip(k):
    rng = random.Random(k)
    signs = [[rng.choice((-1, 1)) for _ in range(k)] for _ in range(3)]
    words = g.pack_bits(T(signs))
    assert words.tolist() == [ref_pack([int(s > 0) for s in row]) for row in signs]
    assert g.unpack_bits(words, k).tolist() == signs
    bools = torch.tensor([[s > 0 for s in row] for row in signs])
    assert torch.equal(g.pack_bits(bools), words)
    # Padding bits are 0.
    if k % 32:
        assert int(words[:, -1].max()) < 1 << (k % 32)


@pytest.mark.parametrize("k", [1, 7, 32, 45, 64, 100])
def test_popcount_dot_is_pm1_dot(k):
    rng = random.Random(1000 + k)
    a = [[rng.choice((-1, 1)) for _ in range(k)] for _ in range(4)]
    w = [[rng.choice((-1, 1)) for _ in range(k)] for _ in range(5)]
    aw, ww = g.pack_bits(T(a)), g.pack_bits(T(w))
    got = g.popcount_dot(aw.unsqueeze(1), ww.unsqueeze(0), k)
    assert got.tolist() == ref_matmul(a, w)
    bitwise = [[ref_popcount_dot(x, y, k) for y in ww.tolist()] for x in aw.tolist()]
    assert got.tolist() == bitwise
    # Garbage in the padding bits does not count.
    if k % 32:
        dirty = aw.clone()
        dirty[:, -1] |= ((1 << 32) - 1) ^ ((1 << (k % 32)) - 1)
        assert torch.equal(g.popcount_dot(dirty.unsqueeze(1), ww.unsqueeze(0), k), got)


def ref_xnor_matmul(a_words, w_words, alpha, k, bias=None):
    """sum_i sum_j alpha[i][n] * 2**j * dot(a_j[m], w_i[n]) + bias[n], from the formula."""
    pa, m = len(a_words), len(a_words[0])
    pw, n = len(w_words), len(w_words[0])
    out = [[0] * n for _ in range(m)]
    for mi in range(m):
        for ni in range(n):
            s = 0
            for i in range(pw):
                for j in range(pa):
                    s += alpha[i][ni] * 2 ** j * ref_popcount_dot(a_words[j][mi], w_words[i][ni], k)
            out[mi][ni] = s + (bias[ni] if bias is not None else 0)
    return out


@pytest.mark.parametrize("pa,pw,k,seed", [(1, 1, 40, 0), (2, 3, 33, 1), (8, 8, 70, 2),
                                          (3, 1, 32, 3), (1, 8, 5, 4)])
def test_xnor_matmul_multi_plane(pa, pw, k, seed):
    rng = random.Random(seed)
    m, n = 3, 4
    a_signs = [[[rng.choice((-1, 1)) for _ in range(k)] for _ in range(m)] for _ in range(pa)]
    w_signs = [[[rng.choice((-1, 1)) for _ in range(k)] for _ in range(n)] for _ in range(pw)]
    alpha = [[rng.randint(0, 65535) for _ in range(n)] for _ in range(pw)]
    alpha[0][0] = 65535
    pmax = g.xnor_max_product(pa, pw)
    bias = [rng.randint(-pmax * 3, pmax * 3) for _ in range(n)]
    a_words = g.pack_bits(T(a_signs))
    w_words = g.pack_bits(T(w_signs))
    got = g.xnor_matmul(a_words, w_words, T(alpha), k, T(bias))
    assert got.tolist() == ref_xnor_matmul(a_words.tolist(), w_words.tolist(), alpha, k, bias)


def test_xnor_all_ones_all_zeros_planes():
    """All-ones and all-zeros planes give the extreme dots +-K (K not a multiple of 32)."""
    k, pa, pw = 45, 2, 2
    ones = torch.ones(k, dtype=torch.int64)
    a = torch.stack([torch.stack([ones, -ones]), torch.stack([ones, ones])])   # [Pa, M=2, K]
    w = torch.stack([torch.stack([ones, -ones, ones]), torch.stack([-ones, -ones, ones])])
    alpha = T([[65535, 1, 7], [65535, 2, 0]])
    got = g.xnor_matmul(g.pack_bits(a), g.pack_bits(w), alpha, k)
    want = ref_xnor_matmul(g.pack_bits(a).tolist(), g.pack_bits(w).tolist(), alpha.tolist(), k)
    assert got.tolist() == want
    # Row 0 of the activations is +1 on both planes (value 3), weight 0 is 65535*(+1) + 65535*(-1).
    assert got[0, 0].item() == 0
    assert got[0, 2].item() == 3 * k * 7
    words = g.pack_bits(a)
    assert words[0, 0].tolist() == [2 ** 32 - 1, 2 ** 13 - 1]   # all-ones plane, K = 45
    assert words[0, 1].tolist() == [0, 0]                        # all-zeros plane


def test_xnor_widest_k():
    k = g.DEFAULT_MAX_K
    a = g.pack_bits(-torch.ones(1, 1, k, dtype=torch.int64))   # all -1 (all-zeros words)
    w = g.pack_bits(-torch.ones(1, 2, k, dtype=torch.int64))
    w[0, 1] = 0x55555555                                       # alternating
    alpha = T([[65535, 3]])
    bound = g.bias_bound(g.xnor_max_product(1, 1), k)
    got = g.xnor_matmul(a, w, alpha, k, T([bound, -bound])).tolist()
    assert got == [[65535 * k + bound, 0 - bound]]


def test_activation_planes_round_trip():
    for planes in range(1, 9):
        lim = 2 ** planes - 1
        a = T(list(range(-lim, lim + 1, 2)))
        s = g.activation_planes(a, planes)
        assert s.shape == (planes, lim + 1)
        back = sum(2 ** j * s[j] for j in range(planes))
        assert back.tolist() == a.tolist()
        assert set(s.unique().tolist()) <= {-1, 1}


def test_binary_code_greedy():
    # Dyadic values and K = 16 keep every mean and residual exact, so equality is meaningful.
    rng = random.Random(7)
    w = [[rng.randint(-64, 64) / 8 for _ in range(16)] for _ in range(3)]
    w[0][0] = 0.0
    b, alpha = g.binary_code(torch.tensor(w, dtype=torch.float64), 3)
    ref_b, ref_alpha = [], []
    res = [row[:] for row in w]
    for _ in range(3):
        bs = [[1 if x >= 0 else -1 for x in row] for row in res]     # sign(0) = +1
        al = [sum(abs(x) for x in row) / len(row) for row in res]
        res = [[x - a * s for x, s in zip(row, srow)] for row, srow, a in zip(res, bs, al)]
        ref_b.append(bs)
        ref_alpha.append(al)
    assert b.tolist() == ref_b
    assert alpha.tolist() == ref_alpha
    assert b[0, 0, 0].item() == 1


def test_quantize_alpha():
    alpha = torch.tensor([[1.0, 0.0, 3.0], [0.5, 0.0, 3.0], [0.25, 0.0, 1.0]], dtype=torch.float64)
    q, scale = g.quantize_alpha(alpha)
    assert q[:, 0].tolist() == [65535, round(0.5 * 65535), round(0.25 * 65535)]
    assert q[:, 1].tolist() == [0, 0, 0] and scale[1].item() == 1.0
    assert q[:, 2].tolist() == [65535, 65535, 21845]
    assert int(q.max()) <= 65535


# ---------------------------------------------------------------------------------------------
# Requantization and activation quantization


def test_requant_params_relative_error():
    rng = random.Random(11)
    scales = [2.0 ** rng.uniform(-40, 15.9) for _ in range(2000)]
    scales += [1.0, 0.5, 2.0 ** -40, 65535.0, 65535.49, 1 - 2 ** -20, 0.999992, 3e-5]
    mult, shift = g.requant_params(torch.tensor(scales, dtype=torch.float64))
    for s, mu, sh in zip(scales, mult.tolist(), shift.tolist()):
        assert 0 <= sh <= g.SHIFT_MAX and 0 <= mu < 2 ** 16
        exact = Fraction(mu, 2 ** sh)
        assert abs(exact - Fraction(s)) / Fraction(s) < Fraction(1, 2 ** 15), s
        if sh > 0:
            assert mu >= 2 ** 15 or (sh < g.SHIFT_MAX and mu == 2 ** 15)


def test_requant_params_round_up_to_next_power():
    """A mantissa that rounds to 2**16 takes one shift less instead of overflowing mult."""
    s = (2 ** 16 - 0.25) / 2 ** 16           # mult would round to 65536 at shift 16
    mult, shift = g.requant_params([s])
    assert (mult.item(), shift.item()) == (32768, 15)


def test_requant_params_tiny_scales_use_largest_shift():
    mult, shift = g.requant_params([2.0 ** -60, 2.0 ** -70])
    assert shift.tolist() == [63, 63]
    assert mult.tolist() == [8, 0]


def test_requantize_against_reference():
    rng = random.Random(12)
    n = 64
    mult = [rng.randint(0, 65535) for _ in range(n)]
    shift = [rng.randint(0, 63) for _ in range(n)]
    shift[:4] = [0, 63, 1, 62]
    lim = 2 ** 46 - 1
    acc = [[rng.choice((rng.randint(-lim, lim), rng.randint(-3000, 3000), lim, -lim))
            for _ in range(n)] for _ in range(8)]
    for out_bits in (8, 4, 16):
        for relu in (False, True):
            got = g.requantize(T(acc), T(mult), T(shift), out_bits=out_bits, relu=relu)
            want = [[ref_requantize(t, mu, sh, out_bits, relu)
                     for t, mu, sh in zip(row, mult, shift)] for row in acc]
            assert got.tolist() == want


def test_requantize_round_half_up_and_saturation():
    # shift 1, mult 1: t / 2 rounded half up (toward +inf), including negative halves.
    t = T([[-5, -3, -1, 1, 3, 5, -4, 4]])
    n = t.shape[1]
    y = g.requantize(t, T([1] * n), T([1] * n))
    assert y.tolist() == [[-2, -1, 0, 1, 2, 3, -2, 2]]
    # shift 2: -6/4 = -1.5 -> -1, -7/4 = -1.75 -> -2, -5/4 = -1.25 -> -1, 6/4 -> 2.
    y = g.requantize(T([[-6, -7, -5, 6, 2, -2]]), T([1] * 6), T([2] * 6))
    assert y.tolist() == [[-1, -2, -1, 2, 1, 0]]
    # Saturation at both ends, exactly at and beyond the limits.
    y = g.requantize(T([[127, 128, -128, -129, 10 ** 6, -10 ** 6]]), T([1] * 6), T([0] * 6))
    assert y.tolist() == [[127, 127, -128, -128, 127, -128]]
    # 255.5 -> 256 -> saturates; -256.5 -> -256 -> saturates (out_bits 9: -256..255).
    y = g.requantize(T([[511, -513, 509, -511]]), T([1] * 4), T([1] * 4), out_bits=9)
    assert y.tolist() == [[255, -256, 255, -255]]
    # ReLU before saturation.
    y = g.requantize(T([[-5, 5, -10 ** 6, 10 ** 6]]), T([1] * 4), T([0] * 4), relu=True)
    assert y.tolist() == [[0, 5, 0, 127]]


def test_requantize_shift_extremes():
    big = 2 ** 46 - 1
    mult = T([65535] * 4)
    y = g.requantize(T([[big, -big, 1, -1]]), mult, T([63] * 4), out_bits=32)
    # p = +-(2**46-1)*65535 < 2**62: (p + 2**62) >> 63 = 0 for both signs.
    assert y.tolist() == [[0, 0, 0, 0]]
    y = g.requantize(T([[big, -big, 3, -3]]), mult, T([0] * 4), out_bits=32)
    assert y.tolist() == [[2 ** 31 - 1, -2 ** 31, 3 * 65535, -3 * 65535]]
    # shift 62: 2**46 * 2**16 = 2**62 is out of range, but (2**46-1)*65535 + 2**61 >> 62 = 1.
    y = g.requantize(T([[big, -big]]), T([65535] * 2), T([62] * 2), out_bits=8)
    assert y.tolist() == [[ref_requantize(big, 65535, 62), ref_requantize(-big, 65535, 62)]]


def test_quantize_symmetric_half_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0, 127.49])
    assert g.quantize_symmetric(x, 1.0, 8).tolist() == [0, 2, 2, 0, -2, 127, -128, 127]
    per_row = g.quantize_symmetric(torch.tensor([[1.0, -1.0], [1.0, 2.0]]),
                                   torch.tensor([[0.5], [2.0]]), 4)
    assert per_row.tolist() == [[2, -2], [0, 1]]


# ---------------------------------------------------------------------------------------------
# Validation: every error message


def test_validation_messages():
    a, w = T([[1, 2]]), T([[3, 4]])
    with pytest.raises(ValueError, match=r"a_bits must be an integer in 2\.\.8, not 9"):
        g.int_matmul(a, w, a_bits=9)
    with pytest.raises(ValueError, match=r"w_bits must be an integer in 2\.\.8, not 1"):
        g.int_matmul(a, w, w_bits=1)
    with pytest.raises(ValueError, match=r"a_bits must be an integer in 2\.\.8, not True"):
        g.int_matmul(a, w, a_bits=True)
    with pytest.raises(ValueError, match=r"activations has values outside -128\.\.127 "
                                         r"\(min 1, max 200\)"):
        g.int_matmul(T([[1, 200]]), w)
    with pytest.raises(ValueError, match=r"weights has values outside -8\.\.7"):
        g.int_matmul(a, T([[3, -9]]), w_bits=4)
    with pytest.raises(TypeError, match=r"activations must be an integer tensor, not torch\.float32"):
        g.int_matmul(torch.ones(1, 2), w)
    with pytest.raises(TypeError, match=r"weights must be a torch\.Tensor, not list"):
        g.int_matmul(a, [[1, 2]])
    with pytest.raises(ValueError, match=r"activations must be \[\.\.\., M, K\] and weights"):
        g.int_matmul(T([1, 2]), w)
    with pytest.raises(ValueError, match=r"K mismatch: activations \(1, 2\) vs weights \(1, 3\)"):
        g.int_matmul(a, T([[1, 2, 3]]))
    with pytest.raises(ValueError, match=r"K must be in 1\.\.1, not 2"):
        g.int_matmul(a, w, max_k=1)
    with pytest.raises(ValueError, match=r"K must be in 1\.\.32768, not 0"):
        g.int_matmul(torch.zeros(1, 0, dtype=torch.int64), torch.zeros(1, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"bias must be \[N\] with N=1, not \(2,\)"):
        g.int_matmul(a, w, T([1, 2]))
    with pytest.raises(ValueError, match=r"too wide for exact evaluation"):
        g._exact_matmul(a, w, 2 ** 53)
    # log
    with pytest.raises(ValueError, match=r"bits must be an integer in 1\.\.8, not 0"):
        g.log_matmul(a, T([[0, 1]]), bits=0)
    with pytest.raises(ValueError, match=r"log codes has values outside 0\.\.15"):
        g.log_matmul(a, T([[0, 16]]), bits=4)
    with pytest.raises(ValueError, match=r"log codes have exponent index 16 > 15, invalid for "
                                         r"6-bit codes \(zero_code=True\)"):
        g.log_matmul(a, T([[16, 0]]), bits=6, zero_code=True)
    with pytest.raises(ValueError, match=r"a zero code needs at least 2 bits"):
        g.log_matmul(a, T([[0, 1]]), bits=1, zero_code=True)
    with pytest.raises(ValueError, match=r"cannot log-quantize a tensor with non-finite values"):
        g.log_quantize(torch.tensor([1.0, float("inf")]), 4)
    with pytest.raises(ValueError, match=r"cannot log-quantize a tensor with non-finite values"):
        g.log_quantize(torch.tensor([1.0, float("nan")]), 4, scale=1.0)
    with pytest.raises(ValueError, match=r"log-quantization scale must be finite and positive"):
        g.log_quantize(torch.tensor([1.0]), 4, scale=-1.0)
    # packing / xnor
    with pytest.raises(ValueError, match=r"signs must be \+1 or -1"):
        g.pack_bits(T([1, 0, -1]))
    with pytest.raises(ValueError, match=r"packed words has values outside 0\.\.4294967295"):
        g.unpack_bits(T([2 ** 32]), 3)
    with pytest.raises(ValueError, match=r"K=33 does not fit 1 words of 32 bits"):
        g.unpack_bits(T([0]), 33)
    with pytest.raises(ValueError, match=r"K=33 does not fit 1 words of 32 bits"):
        g.popcount_dot(T([0]), T([0]), 33)
    with pytest.raises(ValueError, match=r"K=0 does not fit"):
        g.popcount_dot(T([0]), T([0]), 0)
    aw, ww, al = T([[[0]]]), T([[[0], [1]]]), T([[1, 1]])
    with pytest.raises(ValueError, match=r"packed planes must be \[P, rows, words\]"):
        g.xnor_matmul(T([[0]]), ww, al, 4)
    with pytest.raises(ValueError, match=r"activation planes must be an integer in 1\.\.8, not 9"):
        g.xnor_matmul(torch.zeros(9, 1, 1, dtype=torch.int64), ww, al, 4)
    with pytest.raises(ValueError, match=r"weight planes must be an integer in 1\.\.8, not 9"):
        g.xnor_matmul(aw, torch.zeros(9, 2, 1, dtype=torch.int64), T([[1, 1]] * 9), 4)
    with pytest.raises(ValueError, match=r"K must be in 1\.\.32768, not 0"):
        g.xnor_matmul(aw, ww, al, 0)
    with pytest.raises(ValueError, match=r"alpha has values outside 0\.\.65535"):
        g.xnor_matmul(aw, ww, T([[1, 65536]]), 4)
    with pytest.raises(ValueError, match=r"alpha must be \[Pw, N\] = \(1, 2\), not \(2,\)"):
        g.xnor_matmul(aw, ww, T([1, 1]), 4)
    with pytest.raises(ValueError, match=r"K=40 does not fit 1 words"):
        g.xnor_matmul(aw, ww, al, 40)
    with pytest.raises(ValueError, match=r"binary-coded activations has values outside -3\.\.3"):
        g.activation_planes(T([5]), 2)
    with pytest.raises(ValueError, match=r"binary-coded activations must be odd integers"):
        g.activation_planes(T([1, 2]), 2)
    with pytest.raises(ValueError, match=r"planes must be an integer in 1\.\.8, not 0"):
        g.binary_code(torch.ones(2, 2), 0)
    # requantization
    with pytest.raises(ValueError, match=r"bits must be an integer in 2\.\.16, not 1"):
        g.quantize_symmetric(torch.ones(2), 1.0, 1)
    with pytest.raises(ValueError, match=r"requantization scales must be finite and positive"):
        g.requant_params([1.0, 0.0])
    with pytest.raises(ValueError, match=r"requantization scales must be finite and positive"):
        g.requant_params([float("nan")])
    with pytest.raises(ValueError, match=r"requantization scale 65535\.5 is too large"):
        g.requant_params([65535.5])
    acc = T([[1, 2]])
    one, zero = T([1, 1]), T([0, 0])
    with pytest.raises(ValueError, match=r"out_bits must be an integer in 2\.\.32, not 33"):
        g.requantize(acc, one, zero, out_bits=33)
    with pytest.raises(TypeError, match=r"accumulator must be an integer tensor"):
        g.requantize(acc.double(), one, zero)
    with pytest.raises(ValueError, match=r"mult has values outside 0\.\.65535"):
        g.requantize(acc, T([1, -1]), zero)
    with pytest.raises(ValueError, match=r"shift has values outside 0\.\.63"):
        g.requantize(acc, one, T([0, 64]))
    with pytest.raises(ValueError, match=r"mult and shift must be \[N\] with N=2"):
        g.requantize(acc, T([1]), T([0]))
    with pytest.raises(ValueError, match=r"accumulator exceeds 47 bits"):
        g.requantize(T([[2 ** 46, 0]]), one, zero)


# ---------------------------------------------------------------------------------------------
# CPU and CUDA give the same integers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    cuda = torch.device("cuda")
    gen = torch.Generator().manual_seed(42)

    def same(fn, *args, **kw):
        cpu = fn(*args, **kw)
        dev = fn(*[x.to(cuda) if isinstance(x, torch.Tensor) else x for x in args], **kw)
        dev = tuple(dev) if isinstance(dev, tuple) else (dev,)
        cpu = tuple(cpu) if isinstance(cpu, tuple) else (cpu,)
        for c, d in zip(cpu, dev):
            if isinstance(c, torch.Tensor):
                assert d.device.type == "cuda" or d.numel() == c.numel()
                assert torch.equal(c, d.cpu()), fn.__name__
            else:
                assert c == d, fn.__name__
        return cpu[0]

    k = g.DEFAULT_MAX_K
    a = torch.randint(-128, 128, (64, k), generator=gen)
    w = torch.randint(-128, 128, (48, k), generator=gen)
    a[0], w[0] = -128, -128
    bias = torch.randint(-2 ** 29, 2 ** 29 + 1, (48,), generator=gen)
    acc = same(g.int_matmul, a, w, bias)
    mult, shift = g.requant_params(torch.rand(48, generator=gen, dtype=torch.float64) * 1e-3 + 1e-6)
    same(g.requantize, acc, mult, shift)
    same(g.requantize, acc, mult, shift, relu=True, out_bits=4)
    for bits in (1, 4, 8):
        sign = torch.randint(0, 2, (32, 4096), generator=gen)
        idx = torch.randint(0, g.log_depth(bits), (32, 4096), generator=gen)
        codes = (sign << (bits - 1)) | idx
        same(g.log_matmul, a[:, :4096], codes, None, bits=bits, max_k=4096)
    wf = torch.randn(4096, generator=gen, dtype=torch.float64)
    mids = torch.tensor([1.0] + [0.75 * 2.0 ** -i for i in range(16)]
                        + [math.nextafter(0.75 * 2.0 ** -i, 0) for i in range(16)],
                        dtype=torch.float64)
    for bits in (2, 4, 8):
        same(g.log_quantize, wf, bits, refine_iters=2)
        same(g.log_quantize, wf, bits, zero_code=True)
        same(g.log_quantize, mids, bits)
    aw = g.pack_bits(torch.randint(0, 2, (3, 16, 1000), generator=gen).bool())
    ww = g.pack_bits(torch.randint(0, 2, (2, 24, 1000), generator=gen).bool())
    alpha = torch.randint(0, 65536, (2, 24), generator=gen)
    same(g.xnor_matmul, aw, ww, alpha, 1000)
    same(g.popcount_dot, aw[0].unsqueeze(1), ww[0].unsqueeze(0), 1000)
    x = torch.randn(16, 100, generator=gen) * 50
    same(g.quantize_symmetric, x, 0.37, 8)
