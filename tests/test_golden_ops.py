"""The golden integer operations between the matmuls (sw/golden_ops.py), against exact
references written with Python integers and fractions, with their corner cases."""

import math
import random

import pytest
import torch

from lowbit.sw import golden as g
from lowbit.sw import golden_ops as go

T = lambda rows: torch.tensor(rows, dtype=torch.int64)  # noqa: E731


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ---------------------------------------------------------------------------------------------
# Helpers: bit_length, isqrt, log2_fixed, the exponential table


def test_exp2_table_is_the_rounded_power_of_two():
    assert len(go.EXP2_TABLE) == 256
    assert go.EXP2_TABLE[0] == 2 ** 15
    for r, e in enumerate(go.EXP2_TABLE):
        x = 2.0 ** (15 - r / 256)
        assert abs(e - x) <= 0.5 + 1e-9, r
        assert 2 ** 14 < e <= 2 ** 15
    assert list(go.EXP2_TABLE) == sorted(go.EXP2_TABLE, reverse=True)


def test_bit_length_matches_python():
    vals = [0, 1, 2, 3, 4, 7, 8, 2 ** 31, 2 ** 62, 2 ** 63 - 1]
    vals += [random.Random(1).randrange(1 << b) for b in range(1, 63) for _ in range(3)]
    assert go.bit_length(T(vals)).tolist() == [v.bit_length() for v in vals]


def test_isqrt_is_exact_over_the_whole_range():
    rng = random.Random(2)
    vals = [0, 1, 2, 3, 4, 2 ** 62, 2 ** 63 - 1]
    for k in (1, 2, 3, 1000, 2 ** 16 - 1, 2 ** 31 - 1, 3037000499):
        vals += [k * k - 1, k * k, k * k + 1]
    vals += [rng.randrange(1 << rng.randrange(1, 64)) for _ in range(20000)]
    vals = [v for v in vals if 0 <= v < 2 ** 63]
    assert go.isqrt(T(vals)).tolist() == [math.isqrt(v) for v in vals]
    with pytest.raises(ValueError, match=r"isqrt operand must be non-negative, not -1"):
        go.isqrt(T([4, -1]))


def test_log2_fixed_is_a_truncated_log2():
    rng = random.Random(3)
    vals = [1, 2, 3, 2 ** 15, 2 ** 15 + 1, 2 ** 30, 2 ** 31 - 1]
    vals += [rng.randrange(1, 2 ** 31) for _ in range(3000)]
    got = go.log2_fixed(T(vals), 16).tolist()
    for v, y in zip(vals, got):
        exact = math.log2(v) * 2 ** 16
        assert exact - 17 <= y <= exact + 1e-6, v   # at most frac_bits units below, never above
    # powers of two are exact
    assert go.log2_fixed(T([1, 2, 2 ** 20]), 16).tolist() == [0, 2 ** 16, 20 * 2 ** 16]
    with pytest.raises(ValueError, match=r"log2 operand must lie in 1\.\.2\*\*31-1"):
        go.log2_fixed(T([0]))


# ---------------------------------------------------------------------------------------------
# Softmax


def ref_softmax(row, mask=None, frac=8, out_bits=8):
    """The contract's softmax for one row, in Python integers."""
    keep = [not (mask and mask[i]) for i in range(len(row))]
    if not any(keep):
        return [0] * len(row)
    m = max(z for z, k in zip(row, keep) if k)
    e = []
    for z, k in zip(row, keep):
        if not k:
            e.append(0)
            continue
        d = m - z
        q, r = d >> frac, (d >> (frac - 8)) & 255 if frac >= 8 else (d << (8 - frac)) & 255
        e.append(go.EXP2_TABLE[r] >> min(q, 16))
    s = sum(e)
    top = (1 << (out_bits - 1)) - 1
    rec = (top << 31) // s
    return [(x * rec + (1 << 30)) >> 31 for x in e]


def test_softmax_against_reference_and_float():
    rng = random.Random(4)
    rows = [[rng.randint(-2 ** 15, 2 ** 15 - 1) for _ in range(n)] for n in (1, 2, 7, 64, 300)]
    rows += [[rng.randint(-2000, 2000) for _ in range(50)] for _ in range(20)]
    for row in rows:
        got = go.softmax(T([row])).tolist()[0]
        assert got == ref_softmax(row)
        # within a few units of the float softmax at scale 1/127
        x = torch.tensor(row, dtype=torch.float64) / 256 * math.log(2)
        want = torch.softmax(x, -1) * 127
        assert (torch.tensor(got, dtype=torch.float64) - want).abs().max() < 1.0


def test_softmax_corner_cases():
    # all-equal row: every element gets 127 / L (rounded)
    assert go.softmax(T([[5, 5, 5, 5]])).tolist() == [[32, 32, 32, 32]]
    # one element: exactly 1.0 (127), whatever its value, at the widest values too
    for v in (0, -2 ** 31, 2 ** 31 - 1):
        assert go.softmax(T([[v]])).tolist() == [[127]]
    # the widest spread: the smallest element vanishes
    assert go.softmax(T([[2 ** 31 - 1, -2 ** 31]])).tolist() == [[127, 0]]
    # masked positions get 0 and do not count in the max or the sum
    z = T([[100, -100, 5, 10 ** 6]])
    mask = torch.tensor([[False, False, False, True]])
    got = go.softmax(z, mask).tolist()[0]
    assert got[3] == 0 and got[:3] == ref_softmax([100, -100, 5])
    # a fully masked row gives all zeros
    assert go.softmax(T([[1, 2], [3, 4]]), torch.tensor([[True, True], [False, True]])).tolist() \
        == [[0, 0], [127, 0]]
    # a 16-bit output (scale 1/32767)
    assert go.softmax(T([[0, 0]]), out_bits=16).tolist() == [[16384, 16384]]


def test_softmax_longest_row_does_not_overflow():
    row = [0] * go.MAX_ROW
    got = go.softmax(T([row]))
    assert got.tolist()[0][:3] == ref_softmax([0] * go.MAX_ROW)[:3]
    with pytest.raises(ValueError, match=r"softmax rows must have 1\.\.65536 elements"):
        go.softmax(torch.zeros(1, go.MAX_ROW + 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"softmax scores has values outside"):
        go.softmax(T([[2 ** 31]]))


# ---------------------------------------------------------------------------------------------
# Output scores: argmax, log-softmax


def test_argmax_ties_go_to_the_lowest_index():
    z = T([[1, 3, 3, 2], [7, 7, 7, 7], [-5, -9, -5, -6], [0, 0, 0, 1]])
    assert go.argmax(z).tolist() == [1, 0, 0, 3]
    assert go.argmax(T([[2 ** 31 - 1, -2 ** 31]])).tolist() == [0]


def test_log_softmax_against_float():
    rng = random.Random(5)
    for n in (1, 2, 100, 8000):
        z = [rng.randint(-30 * 2 ** 16, 30 * 2 ** 16) for _ in range(n)]
        got = go.log_softmax(T([z]))[0]
        x = torch.tensor(z, dtype=torch.float64) / 2 ** 16
        want = (x - torch.logsumexp(x * math.log(2), 0) / math.log(2)) * 2 ** 16
        assert bool((got <= 0).all())
        # the table's 2**-16 steps and the truncated log2: within 0.01 bits of the float value
        assert float((got.double() - want).abs().max()) < 0.01 * 2 ** 16
    # equal scores: log2(1/n) exactly for a power of two
    assert go.log_softmax(T([[7, 7, 7, 7]])).tolist() == [[-2 * 2 ** 16] * 4]
    assert go.log_softmax(T([[123]])).tolist() == [[0]]


# ---------------------------------------------------------------------------------------------
# LayerNorm


def ref_layernorm(t, gam, bet, shift, eps, out_bits=8):
    d = len(t)
    mu = (sum(t) + d // 2) // d
    c = [x - mu for x in t]
    v = sum(x * x for x in c) + eps
    sigma = math.isqrt(v << 18)
    inv = (1 << 40) // sigma if sigma else 0
    rnd = (1 << (shift - 1)) if shift else 0
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    return [min(max((x * inv * gg + bb + rnd) >> shift, lo), hi) for x, gg, bb in zip(c, gam, bet)]


def test_layernorm_against_reference_and_float():
    rng = random.Random(6)
    d = 64
    gamma = torch.tensor([rng.uniform(-2, 2) for _ in range(d)], dtype=torch.float64)
    beta = torch.tensor([rng.uniform(-1, 1) for _ in range(d)], dtype=torch.float64)
    s_in, s_out = 0.01, 4.0 / 127
    gi, bi, shift, eps = go.layernorm_params(gamma, beta, s_in, s_out, 1e-5)
    assert int(gi.abs().max()) <= 2 ** 15 - 1 and int(gi.abs().max()) > 2 ** 14
    for _ in range(30):
        t = [rng.randint(-2 ** 15, 2 ** 15 - 1) if rng.random() < 0.1 else rng.randint(-300, 300)
             for _ in range(d)]
        got = go.layernorm(T([t]), gi, bi, shift, eps).tolist()[0]
        assert got == ref_layernorm(t, gi.tolist(), bi.tolist(), int(shift), int(eps))
        x = torch.tensor(t, dtype=torch.float64) * s_in
        want = torch.nn.functional.layer_norm(x, (d,), gamma, beta, 1e-5) / s_out
        assert float((torch.tensor(got) - want.clamp(-128, 127)).abs().max()) <= 1.0


def test_layernorm_corner_cases():
    d = 8
    gi, bi = T([1000] * d), T([5 << 20] * d)
    # zero variance: the output is the offset alone, round(b / 2**S), with or without epsilon
    for eps in (0, 7):
        y = go.layernorm(T([[42] * d, [-2 ** 15] * d]), gi, bi, 20, eps)
        assert y.tolist() == [[5] * d, [5] * d]
    # one element: always zero variance
    assert go.layernorm(T([[1234]]), T([1]), T([-3 << 4]), 4).tolist() == [[-3]]
    # widest inputs and the widest row: no overflow, matches the reference
    t = [-2 ** 15, 2 ** 15 - 1] * (go.LN_MAX_D // 2)
    gmax = [2 ** 15 - 1] * go.LN_MAX_D
    bmax = [-(2 ** 47 - 1)] * go.LN_MAX_D
    got = go.layernorm(T([t]), T(gmax), T(bmax), 47, go.LN_EPS_MAX, out_bits=32).tolist()[0]
    assert got == ref_layernorm(t, gmax, bmax, 47, go.LN_EPS_MAX, out_bits=32)
    # saturation at both ends
    y = go.layernorm(T([[-100, 100]]), T([2 ** 15 - 1] * 2), T([0, 0]), 0)
    assert y.tolist() == [[-128, 127]]
    with pytest.raises(ValueError, match=r"LayerNorm rows must have 1\.\.4096 elements, not 4097"):
        go.layernorm(torch.zeros(1, 4097, dtype=torch.int64), T([0] * 4097), T([0] * 4097), 0)
    with pytest.raises(ValueError, match=r"LayerNorm input has values outside -32768\.\.32767"):
        go.layernorm(T([[2 ** 15]]), T([1]), T([0]), 0)
    with pytest.raises(ValueError, match=r"LayerNorm gain has values outside"):
        go.layernorm(T([[1]]), T([2 ** 15]), T([0]), 0)
    with pytest.raises(ValueError, match=r"LayerNorm shift has values outside 0\.\.47"):
        go.layernorm(T([[1]]), T([1]), T([0]), 48)
    with pytest.raises(ValueError, match=r"LayerNorm gain and offset must be \[D\] with D=2"):
        go.layernorm(T([[1, 2]]), T([1]), T([0]), 0)


def test_layernorm_params_choose_the_largest_shift():
    gamma = torch.tensor([0.5, -1.0, 0.0, 0.25], dtype=torch.float64)
    beta = torch.tensor([0.1, 0.0, -0.2, 3.0], dtype=torch.float64)
    gi, bi, shift, eps = go.layernorm_params(gamma, beta, 0.001, 0.05, 1e-5)
    s = int(shift)
    a = 1.0 * 2.0 / 0.05                             # max|gamma| * sqrt(D) / s_out
    assert a * 2.0 ** (s - 31) <= 2 ** 15 - 1 < a * 2.0 ** (s - 30)
    assert gi.tolist() == [round(x * 2 / 0.05 * 2.0 ** (s - 31)) for x in gamma.tolist()]
    assert bi.tolist() == [round(x / 0.05 * 2.0 ** s) for x in beta.tolist()]
    assert int(eps) == round(1e-5 * 4 / 0.001 ** 2)
    # all-zero gain: the largest shift
    _, _, shift, _ = go.layernorm_params(torch.zeros(4, dtype=torch.float64), beta, 1.0, 1.0, 0.0)
    assert int(shift) == go.LN_SHIFT_MAX


# ---------------------------------------------------------------------------------------------
# Residual add, embedding


def test_residual_add_requantizes_each_term_then_saturates():
    a, b = T([[100, -100, 3, 2 ** 20]]), T([[7, 8, -9, -2 ** 20]])
    one = T(1)
    # scales 1/2 and 2 (mult, shift): round half up of each term, then the sum
    y = go.residual_add(a, one, T(1), b, T([2, 2, 2, 2]), T([0, 0, 0, 0]), out_bits=16)
    want = [[(100 + 1) // 2 + 14, -50 + 16, 2 - 18, 2 ** 16 - 1 - 2 ** 16]]
    # the last column: each term saturates to 17 bits first (2**16 - 1 and -2**16)
    assert y.tolist() == want
    # sum saturation at both ends
    y = go.residual_add(T([[2 ** 15 - 1, -2 ** 15]]), one, T(0), T([[1, -1]]), one, T(0))
    assert y.tolist() == [[2 ** 15 - 1, -2 ** 15]]


def test_embedding_requantizes_rows_and_adds_positions():
    table = T([[10, -10, 3], [0, 0, 0], [127, -128, 64]])
    mult, shift = T([1, 1, 3]), T([1, 0, 1])
    pos = T([[1, 2, 3], [-1, -2, -3], [100, -100, 0]])
    ids = T([[2, 0], [1, 2]])
    got = go.embedding(ids, table, mult, shift, pos, offset=1, out_bits=8)
    # row 2 with mult 3, shift 1: (3x + 1) >> 1 = 191, -192, 96 (within 9 bits); row 0 with
    # shift 1: 5, -5, 2; then the position row, then saturation to 8 bits
    want = [[[127, -128, 93], [105, -105, 2]], [[-1, -2, -3], [127, -128, 96]]]
    assert got.tolist() == want
    with pytest.raises(ValueError, match=r"positions 2\.\.3 are outside the position table"):
        go.embedding(ids, table, mult, shift, pos, offset=2)
    with pytest.raises(ValueError, match=r"token ids has values outside 0\.\.2"):
        go.embedding(T([[3]]), table, mult, shift, pos)


def test_requant_params_per_row_and_per_tensor_shapes():
    mult, shift = g.requant_params(torch.tensor([[0.5], [3.0]], dtype=torch.float64))
    assert mult.shape == (2, 1) and shift.shape == (2, 1)
    acc = T([[2, 4], [1, 1]])
    assert g.requantize(acc, mult, shift).tolist() == [[1, 2], [3, 3]]
    m0, s0 = g.requant_params(torch.tensor(0.25, dtype=torch.float64))
    assert m0.dim() == 0 and g.requantize(acc, m0, s0).tolist() == [[1, 1], [0, 0]]


# ---------------------------------------------------------------------------------------------
# The same integers on every device


@pytest.mark.parametrize("device", _devices())
def test_operations_on_each_device(device):
    rng = random.Random(7)
    z = T([[rng.randint(-2 ** 15, 2 ** 15 - 1) for _ in range(40)] for _ in range(6)])
    mask = torch.rand(6, 40, generator=torch.Generator().manual_seed(0)) < 0.3
    t = T([[rng.randint(-2 ** 15, 2 ** 15 - 1) for _ in range(32)] for _ in range(6)])
    gi = T([rng.randint(-2 ** 15 + 1, 2 ** 15 - 1) for _ in range(32)])
    bi = T([rng.randint(-2 ** 40, 2 ** 40) for _ in range(32)])
    s = T([rng.randint(2 ** 15, 2 ** 31 - 1) for _ in range(50)])
    cpu = (go.softmax(z, mask), go.log_softmax(z * 7), go.argmax(z), go.layernorm(t, gi, bi, 33, 9),
           go.log2_fixed(s), go.isqrt(s * s + 5))
    dev = (go.softmax(z.to(device), mask.to(device)), go.log_softmax(z.to(device) * 7),
           go.argmax(z.to(device)), go.layernorm(t.to(device), gi, bi, 33, 9),
           go.log2_fixed(s.to(device)), go.isqrt(s.to(device) * s.to(device) + 5))
    for a, b in zip(cpu, dev):
        assert torch.equal(a, b.cpu())


def test_integer_evaluation_of_the_matmul_gives_the_same_integers():
    rng = torch.Generator().manual_seed(8)
    a = torch.randint(-128, 128, (3, 5, 64), generator=rng)
    w = torch.randint(-128, 128, (7, 64), generator=rng)
    a[0, 0] = -128
    w[0] = -128
    want = g.int_matmul(a, w)
    with g.integer_evaluation():
        assert torch.equal(g.int_matmul(a, w), want)
    assert int(want[0, 0, 0]) == 64 * 2 ** 14
