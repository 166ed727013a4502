"""The fast golden evaluation against the reference kernels, with equality.

``golden.PreparedMatmul`` (every plan it has: int8, float32, planes, float64),
``golden.int_matmul_values`` and ``golden.quantize_symmetric_values`` must return the integers of
``int_matmul`` / ``log_matmul`` / ``xnor_matmul`` / ``quantize_symmetric`` (themselves checked
against plain-Python references in test_golden.py) on the corner cases of every width: the
extremes of the operands, the largest bias, K from 1 to the largest a unit takes, all-zero rows
and planes, and random operands from fixed seeds. The quantized modules' fast path must give the
float outputs of their kernel path, and whole decodes of the shipped packages the same tokens.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
import torch.nn as nn

from lowbit import LowbitError
from lowbit.sw import golden as g
from lowbit.sw import golden_ops as gops
from lowbit.sw.checkpoint import load_model, shipped_models
from lowbit.sw.data import read_parallel, resolve_data_dir
from lowbit.sw.decode import DecodeOptions, translate
from lowbit.sw.quant import intdecode, kernels
from lowbit.sw.quant import weights as W
from lowbit.sw.quant.modules import QuantLinear, QuantMatMul
from lowbit.sw.quant.schemes import LinearSpec, MatMulSpec
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

REFERENCE = {"int_matmul": g.int_matmul, "log_matmul": g.log_matmul,
             "xnor_matmul": g.xnor_matmul}


def reference_kernels():
    """Substituting the golden kernels for themselves turns the fast path off (kernels.fast)."""
    return kernels.use_kernels(**REFERENCE)


@contextlib.contextmanager
def float32_products_not_ieee():
    """CPU float32 products through oneDNN in bf16 (PyTorch >= 2.9's per-backend setting)."""
    backend = getattr(torch.backends.mkldnn, "matmul", None)
    if getattr(backend, "fp32_precision", None) is None:
        pytest.skip("this PyTorch has no per-backend fp32_precision setting")
    saved = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        yield
    finally:
        backend.fp32_precision = saved


def plans_for(make):
    """Every plan ``make(plan=...)`` accepts as exact, each prepared once."""
    out = {}
    for plan in g.PreparedMatmul.PLANS:
        try:
            out[plan] = make(plan=plan)
        except ValueError as e:
            assert "is not exact" in str(e)
    assert "float64" in out
    return out


def assert_all_plans(make, a, want, odd_q=None):
    """Each exact plan of ``make`` gives ``want`` (int64) for activations ``a`` (int64), as
    float32 and float64 inputs; with ``odd_q``, ``a = 2 * odd_q + 1`` through ``.odd`` too, and
    +-1 activations through ``.signs``."""
    plans = plans_for(make)
    for plan, prep in plans.items():
        for dtype in (torch.float32, torch.float64):
            got = prep(a.to(dtype))
            assert got.dtype in (torch.float32, torch.float64), plan
            assert torch.equal(got.to(torch.int64), want), (plan, dtype)
            if odd_q is not None:
                assert torch.equal(prep.odd(odd_q.to(dtype)).to(torch.int64), want), plan
        if bool((a.abs() == 1).all()):
            assert torch.equal(prep.signs(a > 0).to(torch.int64), want), plan
        for operand in (a, a.to(torch.float64)):        # the integer-only model's int64 result
            got = prep.integers(operand)
            assert got.dtype == torch.int64 and torch.equal(got, want), plan
    return plans


def extremes(rng, lo, hi, *shape):
    """Integers drawn from the ends of ``lo..hi`` (and a few from the middle)."""
    choices = [lo, lo + 1, hi - 1, hi, 0, 1, -1]
    choices = [c for c in choices if lo <= c <= hi]
    return torch.tensor([rng.choice(choices) for _ in range(int(torch.tensor(shape).prod()))],
                        dtype=torch.int64).reshape(shape)


def signed(gen, bits, *shape):
    lo, hi = g.int_range(bits)
    return torch.randint(lo, hi + 1, shape, generator=gen)


# ---------------------------------------------------------------------------------------------
# Activation quantization


def test_quantize_symmetric_values_are_the_kernel_integers():
    gen = torch.Generator().manual_seed(0)
    s = 0.37
    ties = (torch.arange(-300, 300, dtype=torch.float64) + 0.5) * s   # x / s on .5 exactly?
    x = torch.cat([torch.randn(500, generator=gen, dtype=torch.float64) * 60, ties,
                   torch.tensor([0.0, -0.0, 1e300, -1e300, 127.5 * s, -128.5 * s])])
    for bits in (2, 4, 8, 16):
        for dtype in (torch.float32, torch.float64):
            xs = x.to(dtype)
            got = g.quantize_symmetric_values(xs, s, bits)
            assert got.dtype == dtype
            assert torch.equal(got.to(torch.int64), g.quantize_symmetric(xs, s, bits))
    rows = torch.randn(7, 33, generator=gen, dtype=torch.float64)
    scale = rows.abs().amax(-1, keepdim=True) / 127
    assert torch.equal(g.quantize_symmetric_values(rows, scale, 8).to(torch.int64),
                       g.quantize_symmetric(rows, scale, 8))


def test_per_token_scale_is_max_abs():
    """ActQuant's per-row max|x| (from the row's max and min) is abs().amax() bit for bit."""
    from lowbit.sw.quant.modules import ActQuant

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(12, 40, generator=gen, dtype=torch.float64) * 5
    x[0] = 0.0
    x[1] = -0.0
    x[2, 3] = float("inf")
    x[3, 4] = float("-inf")
    x[4, 5] = float("nan")
    x[5] = -x[5].abs()
    x[6] = x[6].abs()
    x[7] = 5e-324
    x[8, ::2] = -0.0
    x[8, 1::2] = 0.0
    for kind, bits, ref in (("token", 8, lambda m: torch.where(m / 127 > 0, m / 127, 1.0)),
                            ("sign", 1, lambda m: m / 2)):
        act = ActQuant(kind, bits)
        for dtype in (torch.float64, torch.float32):
            xs = x.to(dtype)
            got = act.scale(xs)
            want = ref(xs.abs().amax(-1, keepdim=True))
            assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
            assert torch.equal(got.isnan(), want.isnan())
            assert not torch.signbit(got).any()


# ---------------------------------------------------------------------------------------------
# INT unit


@pytest.mark.parametrize("a_bits,w_bits,k,seed", [
    (8, 8, 1, 0), (8, 8, 77, 1), (8, 8, 1024, 2), (8, 8, 1025, 3), (6, 6, 300, 4),
    (4, 4, 33, 5), (2, 2, 64, 6), (3, 7, 19, 7), (8, 2, 500, 8), (2, 8, 2000, 9)])
def test_prepared_int_matmul(a_bits, w_bits, k, seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    m, n = 6, 9
    a = signed(gen, a_bits, m, k)
    w = signed(gen, w_bits, n, k)
    lo_a, hi_a = g.int_range(a_bits)
    lo_w, hi_w = g.int_range(w_bits)
    a[0], a[1], a[2] = lo_a, hi_a, extremes(rng, lo_a, hi_a, k)
    w[0], w[1], w[2] = lo_w, hi_w, extremes(rng, lo_w, hi_w, k)
    w[3] = 0                                        # an all-zero row
    bound = g.bias_bound(g.int_max_product(a_bits, w_bits), g.DEFAULT_MAX_K)
    for bias in (None, torch.tensor([bound, -bound] + [rng.randint(-bound, bound)
                                                        for _ in range(n - 2)])):
        want = g.int_matmul(a, w, bias, a_bits=a_bits, w_bits=w_bits)
        assert_all_plans(lambda plan: g.prepare_int(w, bias, a_bits=a_bits, w_bits=w_bits,
                                                    plan=plan), a, want)


def test_prepared_int_matmul_widest_k():
    """-128 x -128 at K = max_k with the largest bias: 2**30, beyond float32 -- and int8."""
    k = g.DEFAULT_MAX_K
    a = torch.full((3, k), -128, dtype=torch.int64)
    a[1] = 127
    a[2, ::3] = 127
    w = torch.full((4, k), -128, dtype=torch.int64)
    w[1] = 127
    w[2, ::2] = 127
    w[3] = 0
    bias = torch.tensor([2 ** 29, -2 ** 29, 0, 2 ** 29])
    want = g.int_matmul(a, w, bias)
    assert want[0, 0] == 2 ** 30
    plans = assert_all_plans(lambda plan: g.prepare_int(w, bias, plan=plan), a, want)
    assert "float32" not in plans and "planes" not in plans    # bound 2**30 > 2**24


def test_prepared_bound_is_the_data_bound():
    """The plan follows the weights' actual bound, not the widest the contract allows."""
    k = 4096
    w = torch.zeros(2, k, dtype=torch.int64)
    w[0, :255] = -128                                   # 128 * 255 * 128 = 4177920 < 2**24
    assert "float32" in plans_for(lambda plan: g.prepare_int(w, plan=plan))
    w[1, :1100] = 127
    w[1, 1100:1200] = -128                              # 128 * (1100*127 + 100*128) > 2**24
    assert "float32" not in plans_for(lambda plan: g.prepare_int(w, plan=plan))


# ---------------------------------------------------------------------------------------------
# Log unit


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("zero_code", [False, True])
def test_prepared_log_matmul(bits, zero_code):
    if zero_code and bits < 2:
        pytest.skip("a zero code needs 2 bits")
    gen = torch.Generator().manual_seed(bits * 2 + zero_code)
    depth = g.log_depth(bits, zero_code)
    m, n, k = 5, 8, 257
    top = depth if zero_code else depth - 1
    codes = (torch.randint(0, 2, (n, k), generator=gen) << (bits - 1)) | \
        torch.randint(0, top + 1, (n, k), generator=gen)
    codes[0] = 0                                        # +largest everywhere
    codes[1] = 1 << (bits - 1)                          # -largest everywhere
    codes[2] = (1 << (bits - 1)) | top                  # smallest (or zero) everywhere
    a = signed(gen, 8, m, k)
    a[0], a[1] = -128, 127
    bound = g.bias_bound(g.log_max_product(8, bits, zero_code), g.DEFAULT_MAX_K)
    bias = torch.tensor([bound, -bound] + [0] * (n - 2))
    for b in (None, bias):
        want = g.log_matmul(a, codes, b, bits=bits, zero_code=zero_code)
        assert_all_plans(lambda plan: g.prepare_log(codes, b, bits=bits, zero_code=zero_code,
                                                    plan=plan), a, want)


def test_prepared_log_widest_k():
    k, bits = 4096, 4
    codes = torch.zeros(2, k, dtype=torch.int64)        # +2**7 everywhere: not int8
    codes[1, ::2] = 1 << (bits - 1)
    a = torch.full((2, k), -128, dtype=torch.int64)
    a[1, 1::2] = 127
    want = g.log_matmul(a, codes, bits=bits, max_k=k)
    plans = assert_all_plans(lambda plan: g.prepare_log(codes, bits=bits, max_k=k, plan=plan),
                             a, want)
    assert "int8" not in plans                          # +128 does not fit int8


# ---------------------------------------------------------------------------------------------
# XNOR unit


def odd_values(gen, planes, *shape):
    lim = (1 << planes) - 1
    return torch.randint(0, lim + 1, shape, generator=gen) * 2 - lim


@pytest.mark.parametrize("pa,pw,k,seed", [
    (1, 1, 40, 0), (8, 1, 256, 1), (8, 8, 70, 2), (2, 3, 33, 3), (7, 2, 1024, 4),
    (8, 4, 1000, 5), (1, 8, 5, 6), (8, 2, 1, 7), (3, 1, 2048, 8)])
def test_prepared_xnor_matmul(pa, pw, k, seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    m, n = 5, 11
    a = odd_values(gen, pa, m, k)
    lim = (1 << pa) - 1
    a[0], a[1], a[2] = lim, -lim, extremes(rng, -lim, lim, k) | 1
    signs = torch.randint(0, 2, (pw, n, k), generator=gen) * 2 - 1
    signs[:, 0] = 1
    signs[:, 1] = -1
    alpha = torch.randint(0, 65536, (pw, n), generator=gen)
    alpha[:, 0] = 65535
    alpha[:, 2] = 0                                     # an all-zero row
    alpha[-1, 3] = 0                                    # a trailing plane with alpha 0
    alpha[0, 4] = 0                                     # a leading one
    words = g.pack_bits(signs)
    a_words = g.pack_bits(g.activation_planes(a, pa))
    bound = g.bias_bound(g.xnor_max_product(pa, pw), g.DEFAULT_MAX_K)
    bias = torch.tensor([bound, -bound] + [rng.randint(-bound, bound) for _ in range(n - 2)])
    for b in (None, bias):
        want = g.xnor_matmul(a_words, words, alpha, k, b)
        q = (a - 1) // 2 if pa == 8 else None
        assert_all_plans(lambda plan: g.prepare_xnor(words, alpha, k, b, a_planes=pa,
                                                     plan=plan), a, want, odd_q=q)


@pytest.mark.parametrize("block", [1024, 7, 1])
def test_prepared_xnor_row_groups_in_one_product(block, monkeypatch):
    """Row groups of 4/3/2/1 planes as the modules prepare them: each group's planes in its rows,
    missing planes with alpha 0 (all -1 signs); the sums are each group's own kernel sums. The
    int8 plan multiplies the planes in blocks of rows (``block``): one, several per plane, one
    per row."""
    monkeypatch.setattr(g, "_INT8_BLOCK", block)
    gen = torch.Generator().manual_seed(11)
    k, n, m = 300, 40, 7
    planes = torch.tensor([1 + i % 4 for i in range(n)])
    signs = torch.randint(0, 2, (4, n, k), generator=gen) * 2 - 1
    alpha = torch.randint(1, 65536, (4, n), generator=gen)
    alpha[torch.arange(4)[:, None] >= planes[None]] = 0
    signs[torch.arange(4)[:, None] >= planes[None]] = -1
    corr = -(signs * alpha[:, :, None]).sum((0, 2))
    q = signed(gen, 8, m, k)
    q[0], q[1] = -128, 127
    a = 2 * q + 1
    a_words = g.pack_bits(g.activation_planes(a, 8))
    want = torch.zeros(m, n, dtype=torch.int64)
    for p in range(1, 5):
        rows = torch.nonzero(planes == p).flatten()
        want[:, rows] = g.xnor_matmul(a_words, g.pack_bits(signs[:p, rows]), alpha[:p, rows], k,
                                      corr[rows])
    assert torch.equal(want, 2 * (q @ (signs * alpha[:, :, None]).sum(0).T))   # the 2q+1 code
    plans = assert_all_plans(lambda plan: g.prepare_xnor(g.pack_bits(signs), alpha, k, corr,
                                                         a_planes=8, plan=plan), a, want, odd_q=q)
    if "int8" in plans:                                 # blocks of `block` rows of each plane
        assert len(plans["int8"].blocks) == sum(-(-int((planes > j).sum()) // block)
                                                for j in range(4))
    one = g.prepare_xnor(g.pack_bits(signs[:1]), alpha[:1], k, None, a_planes=8)
    if one.plan == "int8":                              # one plane: one product, any rows
        assert len(one.blocks) == 1


def test_prepared_xnor_widest_k():
    k = g.DEFAULT_MAX_K
    signs = -torch.ones(1, 2, k, dtype=torch.int64)
    signs[0, 1, ::2] = 1
    alpha = torch.tensor([[65535, 3]])
    bound = g.bias_bound(g.xnor_max_product(8, 1), k)
    bias = torch.tensor([bound, -bound])
    a = torch.full((2, k), -255, dtype=torch.int64)
    a[1, ::3] = 255
    a_words = g.pack_bits(g.activation_planes(a, 8))
    want = g.xnor_matmul(a_words, g.pack_bits(signs), alpha, k, bias)
    assert want[0, 0] == 255 * 65535 * k + bound
    assert_all_plans(lambda plan: g.prepare_xnor(g.pack_bits(signs), alpha, k, bias, a_planes=8,
                                                 plan=plan), a, want, odd_q=(a - 1) // 2)


def test_prepared_checks_like_the_kernels():
    w = torch.zeros(3, 8, dtype=torch.int64)
    with pytest.raises(ValueError, match="weights has values outside -128..127"):
        g.prepare_int(w + 128)
    with pytest.raises(ValueError, match="bias has values outside"):
        g.prepare_int(w, torch.tensor([2 ** 29 + 1, 0, 0]))
    with pytest.raises(ValueError, match=r"bias must be \[N\] with N=3"):
        g.prepare_int(w, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="K must be in 1..4"):
        g.prepare_int(w, max_k=4)
    with pytest.raises(ValueError, match=r"prepared weights must be \[N, K\]"):
        g.prepare_int(w[None])
    with pytest.raises(ValueError, match="log codes have exponent index"):
        g.prepare_log(torch.full((2, 4), 20), bits=6)
    with pytest.raises(ValueError, match="alpha has values outside 0..65535"):
        g.prepare_xnor(torch.zeros(1, 2, 1, dtype=torch.int64), torch.tensor([[-1, 0]]), 8,
                       a_planes=8)
    with pytest.raises(ValueError, match="plan must be one of int8, float32, planes, float64"):
        g.prepare_int(w, plan="float16")
    with pytest.raises(ValueError, match="plan 'float32' is not exact"):
        g.prepare_int(torch.full((1, 2000), -128), plan="float32")


# ---------------------------------------------------------------------------------------------
# Products of two activations (Q.K^T, attention.V)


@pytest.mark.parametrize("bits,k", [(8, 64), (8, 1024), (8, 1025), (4, 300), (2, 4096)])
def test_int_matmul_values(bits, k):
    gen = torch.Generator().manual_seed(k)
    a = signed(gen, bits, 2, 3, 5, k)
    w = signed(gen, bits, 3, 4, k)                      # broadcast over the first dimension
    lo, hi = g.int_range(bits)
    a[0, 0], w[0] = lo, lo
    a[1, 2], w[2, 1] = hi, lo
    want = g.int_matmul(a, w, a_bits=bits, w_bits=bits)
    for da in (torch.float32, torch.float64):
        for dw in (torch.float32, torch.float64):
            got = g.int_matmul_values(a.to(da), w.to(dw), a_bits=bits, w_bits=bits)
            narrow = torch.float32 in (da, dw) and k * g.int_max_product(bits, bits) <= 2 ** 24
            assert got.dtype == (torch.float32 if narrow else torch.float64)
            assert torch.equal(got.to(torch.int64), want)


def test_float32_products_that_are_not_ieee_fall_back_to_float64():
    gen = torch.Generator().manual_seed(3)
    w = signed(gen, 8, 16, 200)
    a = signed(gen, 8, 9, 200)
    prep = g.prepare_int(w, plan="float32")
    assert g.float32_matmul_is_ieee("cpu")
    with float32_products_not_ieee():
        assert not g.float32_matmul_is_ieee("cpu")
        got = prep(a.to(torch.float64))
        assert got.dtype == torch.float64
        assert torch.equal(got.to(torch.int64), g.int_matmul(a, w))
        vals = g.int_matmul_values(a.float(), w.float())
        assert vals.dtype == torch.float64
    assert g.float32_matmul_is_ieee("cpu")


def test_int8_products_are_checked_once():
    exact = g.int8_matmul_is_exact("cpu")
    assert isinstance(exact, bool)
    assert not g.int8_matmul_is_exact("meta")           # only the CPU is considered
    w = torch.full((2, 8), -128, dtype=torch.int64)
    assert ("int8" in plans_for(lambda plan: g.prepare_int(w, plan=plan))) == exact


def test_the_default_plan_takes_int8_only_where_it_is_fast():
    """int8 is the first plan where it is exact and faster than float64 (checked once per
    process); elsewhere the default is the next exact plan, with the same integers."""
    fast = g.int8_matmul_is_fast()
    assert isinstance(fast, bool) and g.int8_matmul_is_fast() is fast
    assert not fast or g.int8_matmul_is_exact("cpu")
    gen = torch.Generator().manual_seed(9)
    w = signed(gen, 8, 24, 40)
    default = g.prepare_int(w)
    assert default.plan == ("int8" if fast else "float32")
    a = signed(gen, 8, 5, 40)
    for prep in plans_for(lambda plan: g.prepare_int(w, plan=plan)).values():
        assert torch.equal(prep(a.to(torch.float64)).to(torch.int64),
                           default(a.to(torch.float64)).to(torch.int64))
    assert torch.equal(default(a.to(torch.float64)).to(torch.int64), g.int_matmul(a, w))


# ---------------------------------------------------------------------------------------------
# Modules: the fast path against the kernel path


SPECS = {
    "int8": LinearSpec("int", "int", 8, "tensor", 8),
    "int4": LinearSpec("int", "int", 4, "tensor", 4),
    "log4": LinearSpec("log", "log", 4, "tensor", 8),
    "log2": LinearSpec("log", "log", 2, "tensor", 8),
    "bmt1": LinearSpec("xnor", "bmt", 1, "token", 8),
    "bmt1a1": LinearSpec("xnor", "bmt", 1, "sign", 1),
    "binary3": LinearSpec("xnor", "binary", 3, "token", 8),
    "rows": LinearSpec("xnor", "rows", 4, "token", 8),
}


def integer_layer(key: str, dtype, k: int = 70, n: int = 30, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=gen) * 0.2)
        lin.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        lin.weight[3].zero_()
    layer = QuantLinear(lin, SPECS[key], "layer").to(dtype)
    if key == "rows":
        layer.row_planes.copy_(torch.tensor([1 + i % 4 for i in range(n)]))
    x = (torch.randn(3, 7, k, generator=gen) * 3).to(dtype)
    x[0, 1] = 0.0                                       # an all-zero token
    x[1, 2, :5] = x[1, 2].abs().max() * torch.tensor([1, -1, 1, -1, 1])   # the row's extremes
    layer.train()
    layer(x)
    layer.eval()
    layer.set_integer(layer.quantized_weight())
    return layer, x


@pytest.mark.parametrize("key", sorted(SPECS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_fast_path_equals_kernel_path(key, dtype):
    layer, x = integer_layer(key, dtype)
    with reference_kernels():
        want = layer(x)
    got = layer(x)
    assert got.dtype == want.dtype == dtype
    assert torch.equal(got, want)
    for plan in g.PreparedMatmul.PLANS:                 # every plan the weights allow
        try:
            layer._prep = layer._prepare(plan)
        except ValueError:
            continue
        assert torch.equal(layer(x), want), plan


def test_matmul_fast_path_reuses_an_unchanged_operand():
    gen = torch.Generator().manual_seed(4)
    mm = QuantMatMul(MatMulSpec(8), "attn.qk", probs=False).double()
    a = torch.randn(2, 3, 1, 16, generator=gen, dtype=torch.float64)
    kv = torch.randn(2, 5, 3, 16, generator=gen, dtype=torch.float64)
    b = kv.transpose(1, 2).transpose(-1, -2)            # a transposed view, as keys are
    mm.train()
    mm(a, b)
    mm.eval()
    mm.set_integer()

    def reference(a, b):
        with reference_kernels():
            return mm(a, b)

    first = mm(a, b)
    assert torch.equal(first, reference(a, b))
    again = mm(a, kv.transpose(1, 2).transpose(-1, -2))  # a new view of the same memory
    assert torch.equal(again, first)
    kv[0, 0, 0, 0] += 1.0                               # in place: the version changes
    changed = mm(a, kv.transpose(1, 2).transpose(-1, -2))
    assert not torch.equal(changed, first)
    assert torch.equal(changed, reference(a, kv.transpose(1, 2).transpose(-1, -2)))
    other = torch.randn(2, 3, 16, 5, generator=gen, dtype=torch.float64)
    assert torch.equal(mm(a, other), reference(a, other))


def test_token_operand_is_shared_while_the_input_is_unchanged():
    """Layers reading one tensor (Q, K, V) share its per-token quantization; an in-place change
    of the tensor, or another tensor, is quantized anew."""
    first, x = integer_layer("binary3", torch.float64, seed=1)
    others = [integer_layer(key, torch.float64, seed=2)[0] for key in ("rows", "bmt1", "bmt1a1")]

    def both(x):
        with reference_kernels():
            want = [m(x) for m in (first, *others)]
        return want, [m(x) for m in (first, *others)]

    for step in range(3):
        want, got = both(x)
        assert all(torch.equal(g_, w) for g_, w in zip(got, want)), step
        if step == 0:
            x.mul_(-3.0)                                # in place: same memory, new version
        else:
            x = x.flip(0).contiguous()                  # another tensor


def test_fast_path_stands_aside_for_substitutes_observers_and_integer_evaluation():
    assert kernels.fast("int_matmul")
    with kernels.use_kernels(int_matmul=g.int_matmul):
        assert not kernels.fast("int_matmul") and kernels.fast("xnor_matmul")
    with kernels.observe(lambda site, acc: None):
        assert not kernels.fast("xnor_matmul")
    with g.integer_evaluation():
        assert not kernels.fast("log_matmul")
    layer, x = integer_layer("rows", torch.float64)
    seen = []
    with kernels.observe(lambda site, acc: seen.append(acc.dtype)):
        layer(x)
    assert seen == [torch.int64] * 4                    # the kernel path: one call per group


def test_reference_kernels_environment_variable(monkeypatch):
    """LOWBIT_REFERENCE_KERNELS=1 sends every matmul of a process through the golden kernel itself
    (the command-line switch for comparing whole decodes); 0 or unset keeps the fast path; any
    other value is refused."""
    layer, x = integer_layer("rows", torch.float64)
    calls = []
    golden_xnor = g.xnor_matmul
    monkeypatch.setattr(g, "xnor_matmul", lambda *a, **k: calls.append(1) or golden_xnor(*a, **k))
    monkeypatch.delenv(kernels.REFERENCE_ENV, raising=False)
    fast = layer(x)
    assert kernels.fast("xnor_matmul") and calls == []
    monkeypatch.setenv(kernels.REFERENCE_ENV, "0")
    assert torch.equal(layer(x), fast) and calls == []
    monkeypatch.setenv(kernels.REFERENCE_ENV, "1")
    assert not kernels.fast("int_matmul") and not kernels.fast("xnor_matmul")
    assert torch.equal(layer(x), fast) and len(calls) == 4     # one kernel call per plane group
    for bad in ("yes", "2", " 1"):
        monkeypatch.setenv(kernels.REFERENCE_ENV, bad)
        with pytest.raises(LowbitError, match="LOWBIT_REFERENCE_KERNELS must be 0 or 1"):
            kernels.fast("int_matmul")


def test_int8_products_share_a_scratch_buffer_but_not_their_results():
    """The int8 plan's int32 sums go to one scratch buffer per thread; a result is its own
    tensor, unchanged by later products (a larger one grows the buffer)."""
    gen = torch.Generator().manual_seed(5)
    if not g.int8_matmul_is_exact("cpu"):
        pytest.skip("no exact int8 product on this CPU")
    small = g.prepare_int(signed(gen, 8, 3, 16), plan="int8")
    large = g.prepare_int(signed(gen, 8, 300, 64), plan="int8")
    assert small.plan == large.plan == "int8"
    a, b = signed(gen, 8, 2, 16), signed(gen, 8, 50, 64)
    first = small(a.to(torch.float64))
    kept = first.clone()
    large(b.to(torch.float64))
    small(signed(gen, 8, 2, 16).to(torch.float64))
    assert torch.equal(first, kept)
    assert torch.equal(first.to(torch.int64), g.int_matmul(a, small._eff))


# ---------------------------------------------------------------------------------------------
# Integer-only decode: the operations' and the beam search's fast evaluation


def test_requantize_overwrite_is_the_same_integers():
    """``overwrite=True`` runs the requantizer's operations in place in the accumulator: the
    same integers for every corner of the contract (widest accumulators, multipliers 0 and
    2**16 - 1, shifts 0 and 63, ReLU, per channel / row / tensor), and the result is the
    accumulator itself; where the result would be larger than the accumulator it is not."""
    rng, gen = random.Random(3), torch.Generator().manual_seed(3)
    top = (1 << (g.ACC_MAX_BITS - 1)) - 1
    m, n = 7, 13
    acc = torch.randint(-top, top + 1, (m, n), generator=gen)
    acc[0], acc[1], acc[2] = top, -top, extremes(rng, -top, top, n)
    acc[3] = 0
    mults = [torch.randint(0, 1 << 16, (n,), generator=gen),
             torch.tensor([0, (1 << 16) - 1] * 6 + [1]),
             torch.randint(0, 1 << 16, (m, 1), generator=gen), torch.tensor(40000)]
    shifts = [torch.randint(0, 64, (n,), generator=gen), torch.tensor([0, 63, 1, 62] * 3 + [31]),
              torch.randint(0, 64, (m, 1), generator=gen), torch.tensor(17)]
    for mult, shift in zip(mults, shifts):
        for out_bits in (8, 16, 32):
            for relu in (False, True):
                want = g.requantize(acc.clone(), mult, shift, out_bits=out_bits, relu=relu)
                owned = acc.clone()
                got = g.requantize(owned, mult, shift, out_bits=out_bits, relu=relu,
                                   check=False, overwrite=True)
                assert torch.equal(got, want) and got.data_ptr() == owned.data_ptr()
    row = acc[:1].clone()                                      # [1, N] against a [M, 1] mult
    got = g.requantize(row, mults[2], shifts[2], check=False, overwrite=True)
    assert got.shape == (m, n) and torch.equal(row, acc[:1])
    assert torch.equal(got, g.requantize(acc[:1], mults[2], shifts[2], check=False))


def test_sparse_log_softmax_terms_are_the_dense_ones():
    """The row sum over the terms ``d < 2**(F+4)`` only is the whole sum: rows within and
    beyond that distance (the boundary itself, one unit either side), 32-bit extremes in one
    row, one-element rows, and three-dimensional scores."""
    gen = torch.Generator().manual_seed(8)
    f = gops.SCORE_FRAC_BITS
    edge = 16 << f
    z = torch.randint(-(1 << 31), 1 << 31, (9, 50), generator=gen)
    z[0] = 7                                                    # all equal
    z[1] = torch.randint(-(1 << 20), 1 << 20, (50,), generator=gen)    # all near the top
    z[2, :3] = torch.tensor([0, -edge + 1, -edge])              # the boundary, either side
    z[2, 3:] = -edge - 1
    z[3, 0], z[3, 1] = (1 << 31) - 1, -(1 << 31)                # the widest spread
    z[4] = torch.arange(50) * (edge // 40)                      # a ramp across the boundary
    for scores in (z, z[:, :1], z.view(3, 3, 50)):
        dense = gops.log_softmax_terms(scores)
        sparse = gops.log_softmax_terms(scores, sparse=True)
        assert torch.equal(dense[0], sparse[0]) and torch.equal(dense[1], sparse[1])
        assert torch.equal(-sparse[0] - sparse[1], gops.log_softmax(scores))


def _candidates(gen, b, width, steps, spread):
    """Beam candidates as the search makes them: real scores in ``(-steps * 2**33, 0]`` with
    many ties, ``DEAD`` and below (a dead beam's score plus a log-probability)."""
    cand = -torch.randint(0, min(spread, steps << intdecode.LOGP_BITS), (b, width), generator=gen)
    low = -(steps << intdecode.LOGP_BITS) + 1                  # the lowest real score
    cand[0, ::3] = low
    cand[1] = intdecode.DEAD - torch.randint(0, 1 << 33, (width,), generator=gen)
    cand[2, ::2] = intdecode.DEAD
    cand[3, 1::4] = intdecode.DEAD - 1
    return cand


@pytest.mark.parametrize("n,width,steps", [(2, 10, 1), (10, 40000, 200), (4, 7, 512),
                                           (6, 33, 1 << 24)])
def test_top_candidates_rank_as_the_stable_sort(n, width, steps):
    """One ``topk`` of unique keys picks and orders the candidates as the stable sort of the
    reference search does (ties to the lower index, dead ones tied), also at the lowest real
    score; where the keys would not fit int64 (``steps = 2**24``) it falls back to the sort."""
    fits = (steps << intdecode.LOGP_BITS) << max(width - 1, 1).bit_length() < 1 << 62
    assert fits == (steps < 1 << 24)                        # the last case takes the fallback
    gen = torch.Generator().manual_seed(width)
    for spread in (3, 1 << 40):
        cand = _candidates(gen, 5, width, steps, spread)
        want = intdecode._top(cand.clamp(min=intdecode.DEAD), n)
        got = intdecode._top_candidates(cand.clone(), n, steps)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_best_candidates_fast_equal_reference(monkeypatch):
    """The beam step's ranking from the integer scores: the fast evaluation (sparse log-softmax
    terms, candidates summed in place, topk of keys) against the golden ``log_softmax`` and the
    stable sort (``LOWBIT_REFERENCE_KERNELS=1``), with dead beams and whole dead sentences."""
    gen = torch.Generator().manual_seed(2)
    b, k, v = 4, 3, 500
    z = torch.randint(-(1 << 31), 1 << 31, (b * k, v), generator=gen)
    z[0] = z[0] >> 12                                         # a row with many near terms
    z[1, :] = 5                                               # all tied
    scores = -torch.randint(0, 1 << 30, (b, k), generator=gen)
    scores[0, 1:] = intdecode.DEAD                            # the first step: one live beam
    scores[3] = intdecode.DEAD                                # a finished sentence
    monkeypatch.delenv(kernels.REFERENCE_ENV, raising=False)
    fast = intdecode._best_candidates(z.clone(), scores.clone(), 2 * k, 40)
    monkeypatch.setenv(kernels.REFERENCE_ENV, "1")
    ref = intdecode._best_candidates(z.clone(), scores.clone(), 2 * k, 40)
    assert torch.equal(fast[0], ref[0]) and torch.equal(fast[1], ref[1])


# ---------------------------------------------------------------------------------------------
# Whole decodes of the shipped packages


PACKAGES = [name for name in shipped_models() if name != "multi30k-en-de"]


@pytest.mark.parametrize("name", PACKAGES)
def test_shipped_package_decodes_the_same_tokens(name):
    model, tok, _ = load_model(name)
    src, _ = read_parallel(resolve_data_dir(), "test_2016_flickr", limit=6)
    for opts in (DecodeOptions(beam=5), DecodeOptions(beam=1)):
        fast = translate(model, tok, src, opts)
        with reference_kernels():
            ref = translate(model, tok, src, opts)
        assert fast == ref


@pytest.mark.parametrize("name", PACKAGES)
def test_shipped_package_decodes_like_the_reference_path(name, monkeypatch):
    """Everything fast (the matmuls, the integer-only model's operations and beam ranking, the
    decoded embedding table) against ``LOWBIT_REFERENCE_KERNELS=1``: the same tokens."""
    model, tok, _ = load_model(name)
    src, _ = read_parallel(resolve_data_dir(), "test_2016_flickr", limit=6)
    for opts in (DecodeOptions(beam=5), DecodeOptions(beam=1)):
        monkeypatch.delenv(kernels.REFERENCE_ENV, raising=False)
        fast = translate(model, tok, src, opts)
        monkeypatch.setenv(kernels.REFERENCE_ENV, "1")
        assert translate(model, tok, src, opts) == fast


def test_bench_decode_models(capsys):
    from lowbit.cli import main

    argv = ["bench", "decode", "--models", "multi30k-en-de,multi30k-en-de-int8", "--sentences",
            "4", "--beams", "1,2", "--repeats", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0].startswith("split: test_2016_flickr (4 sentences)")
    rows = [line.split() for line in lines[-4:]]
    assert [r[:3] for r in rows] == [[name, "1", search] for search in ("greedy", "beam")
                                     for name in ("multi30k-en-de", "multi30k-en-de-int8")]
    assert rows[0][-3] == rows[0][-1] == rows[2][-3] == rows[2][-1] == "1.00"   # the reference
    assert all(float(r[-4]) > 0 and float(r[-2]) > 0 for r in rows)
    for argv, message in (
            (["--models", "multi30k-en-de,multi30k-en-de"], "--models must be distinct"),
            (["--models", "multi30k-en-de,"], "--models must be distinct"),
            (["--models", "multi30k-en-de", "--model", "multi30k-en-de"], "--models names every"),
            (["--models", "multi30k-en-de", "--devices", "cuda"], "--models measures on the CPU"),
            (["--models", "multi30k-en-de", "--peer", "ctranslate2"], "--peer and --models")):
        assert main(["bench", "decode", *argv]) == 2
        assert capsys.readouterr().err.startswith(f"lowbit: error: {message}")


# ---------------------------------------------------------------------------------------------
# CUDA


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fast_path_equals_kernel_path():
    cuda = torch.device("cuda")
    gen = torch.Generator().manual_seed(5)
    w = signed(gen, 8, 48, 1024)
    w[0] = -128
    a = signed(gen, 8, 64, 1024)
    a[0] = -128
    bias = torch.randint(-2 ** 29, 2 ** 29, (48,), generator=gen)
    prep = g.prepare_int(w, bias)
    want = g.int_matmul(a, w, bias)
    got = prep.to(cuda)(a.to(cuda, torch.float64))
    assert got.device.type == "cuda"
    assert torch.equal(got.cpu().to(torch.int64), want)
    for key in sorted(SPECS):
        layer, x = integer_layer(key, torch.float64)
        cpu = layer(x)
        layer.to(cuda)
        with reference_kernels():
            ref = layer(x.to(cuda))
        fast = layer(x.to(cuda))
        assert torch.equal(fast, ref), key
        assert torch.equal(fast.cpu(), cpu), key
