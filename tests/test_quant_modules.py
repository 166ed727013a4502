"""Quantized modules: the integer mode equals a direct golden-kernel call (equality), the fake-quant
mode agrees with the integer mode up to float rounding, and the kernel hook sees every call."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lowbit.sw import golden
from lowbit.sw.quant import kernels
from lowbit.sw.quant.modules import ActQuant, QuantLinear, QuantMatMul
from lowbit.sw.quant.schemes import LinearSpec, MatMulSpec
from lowbit.sw.quant import weights as W

SPECS = {
    "int8": LinearSpec("int", "int", 8, "tensor", 8),
    "int6": LinearSpec("int", "int", 6, "tensor", 6),
    "log4": LinearSpec("log", "log", 4, "tensor", 8),
    "log1": LinearSpec("log", "log", 1, "tensor", 8),
    "bmt1": LinearSpec("xnor", "bmt", 1, "token", 8),
    "bmt1a1": LinearSpec("xnor", "bmt", 1, "sign", 1),
    "binary3": LinearSpec("xnor", "binary", 3, "token", 8),
    "rows": LinearSpec("xnor", "rows", 4, "token", 8),
}


def make_layer(key: str, k: int = 40, n: int = 24, seed: int = 0) -> tuple[QuantLinear, torch.Tensor]:
    """A calibrated QuantLinear in float64 and an input batch [2, 5, k] (K not a multiple of 32)."""
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g, dtype=torch.float64) * 0.2)
        lin.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.1)
        lin.weight[3].zero_()                       # an all-zero row
    layer = QuantLinear(lin, SPECS[key], "layer").double()
    if key == "rows":
        layer.row_planes.copy_(torch.tensor([1 + i % 4 for i in range(n)]))
    x = torch.randn(2, 5, k, generator=g, dtype=torch.float64)
    x[0, 1] = 0.0                                   # an all-zero token
    layer.train()
    layer(x)                                        # calibrates the per-tensor range
    layer.eval()
    return layer, x


@pytest.mark.parametrize("key", sorted(SPECS))
def test_fake_quant_forward_matches_integer_path(key):
    layer, x = make_layer(key)
    fake = layer(x)
    layer.set_integer(layer.quantized_weight())
    exact = layer(x)
    assert exact.dtype == torch.float64
    torch.testing.assert_close(fake, exact, rtol=1e-12, atol=1e-12)


def golden_reference(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The integer path written out with direct golden calls (no module code)."""
    qw = layer.quantized_weight()
    x2 = x.reshape(-1, layer.in_features)
    spec = layer.spec
    if spec.unit in ("int", "log"):
        s_a = layer.act.amax.double() / (2 ** (spec.a_bits - 1) - 1)
        a = golden.quantize_symmetric(x2, s_a, spec.a_bits)
        acc_scale = s_a * qw.channel_scale()
        bias = torch.round(layer.bias.detach() / acc_scale).to(torch.int64)
        if spec.unit == "int":
            acc = golden.int_matmul(a, qw.values, bias, a_bits=spec.a_bits, w_bits=spec.w_bits)
        else:
            acc = golden.log_matmul(a, qw.codes, bias, bits=spec.w_bits, a_bits=spec.a_bits)
        return (acc.double() * acc_scale).reshape(*x.shape[:-1], -1)
    groups = qw.groups if isinstance(qw, W.RowGroups) else [(torch.arange(layer.out_features), qw)]
    y = torch.zeros(x2.shape[0], layer.out_features, dtype=torch.float64)
    if spec.act == "sign":
        s = x2.abs().amax(-1, keepdim=True) / 2
        words = golden.pack_bits(x2 >= 0)[None]
        for rows, part in groups:
            acc = golden.xnor_matmul(words, golden.pack_bits(part.signs), part.alpha, x2.shape[1])
            y[:, rows] = acc.double() * s * part.scale
    else:
        s = x2.abs().amax(-1, keepdim=True) / 127
        s = torch.where(s > 0, s, torch.ones_like(s))
        q = golden.quantize_symmetric(x2, s, 8)
        words = golden.pack_bits(golden.activation_planes(2 * q + 1, 8))
        for rows, part in groups:
            corr = -part.integer_weights().sum(1)
            acc = golden.xnor_matmul(words, golden.pack_bits(part.signs), part.alpha, x2.shape[1], corr)
            y[:, rows] = acc.double() * (s / 2) * part.scale
    return (y + layer.bias.detach()).reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_integer_mode_is_the_golden_kernel_call(key):
    layer, x = make_layer(key, seed=1)
    expected = golden_reference(layer, x)
    layer.set_integer(layer.quantized_weight())
    seen = []
    with kernels.observe(lambda site, acc: seen.append((site.name, site.unit, acc.dtype))):
        out = layer(x)
    assert torch.equal(out, expected)
    assert seen and all(s == ("layer", SPECS[key].unit, torch.int64) for s in seen)
    assert len(seen) == (4 if key == "rows" else 1)   # one call per plane-count group


def test_matmul_module_is_int_matmul_and_fake_mode_agrees():
    g = torch.Generator().manual_seed(2)
    mm = QuantMatMul(MatMulSpec(8), "attn.qk", probs=False).double()
    a = torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64)
    b = torch.randn(2, 3, 16, 7, generator=g, dtype=torch.float64)
    mm.train()
    mm(a, b)
    mm.eval()
    fake = mm(a, b)
    mm.set_integer()
    out = mm(a, b)
    sa, sb = mm.a_act.amax.double() / 127, mm.b_act.amax.double() / 127
    acc = golden.int_matmul(golden.quantize_symmetric(a, sa, 8),
                            golden.quantize_symmetric(b.transpose(-1, -2), sb, 8))
    assert torch.equal(out, acc.double() * (sa * sb))
    torch.testing.assert_close(fake, out, rtol=1e-12, atol=1e-12)


def test_attention_probabilities_use_the_fixed_range():
    mm = QuantMatMul(MatMulSpec(8), "attn.av", probs=True)
    assert mm.a_act.kind == "fixed" and float(mm.a_act.amax) == 1.0
    probs = torch.softmax(torch.randn(1, 4, 9, dtype=torch.float64), -1)
    q, s = mm.a_act.quantize(probs)
    assert float(s) == 1 / 127 and int(q.max()) <= 127 and int(q.min()) >= 0


def test_int_bias_is_rounded_at_the_accumulator_scale():
    layer, _ = make_layer("int8", seed=3)
    qw = layer.quantized_weight()
    layer.set_integer(qw)
    acc_scale = layer.act.amax.double() / 127 * qw.scale
    assert torch.equal(layer.ints.bias_int, torch.round(layer.bias.detach() / acc_scale).to(torch.int64))
    assert torch.equal(layer.ints.acc_scale, acc_scale)


def test_kernel_hook_substitutes_a_callable_with_the_golden_signature():
    layer, x = make_layer("log4", seed=4)
    layer.set_integer(layer.quantized_weight())
    reference = layer(x)
    calls = []

    def my_log_matmul(a, codes, bias=None, **params):
        site = kernels.current_site()
        calls.append((site.name, site.unit, dict(site.params), tuple(a.shape), params))
        return golden.log_matmul(a, codes, bias, **params) + 1  # a deliberately wrong unit

    with kernels.use_kernels(log_matmul=my_log_matmul):
        wrong = layer(x)
    assert calls == [("layer", "log", {"bits": 4, "a_bits": 8}, (10, 40), {"bits": 4, "a_bits": 8})]
    assert not torch.equal(wrong, reference)
    assert torch.equal(layer(x), reference)          # the override ended with the block
    assert kernels.current_site() is None
    with pytest.raises(ValueError, match="unknown kernel"):
        with kernels.use_kernels(fft=my_log_matmul):
            pass


def test_count_calls_and_act_quant_validation():
    layer, x = make_layer("int8", seed=5)
    layer.set_integer(layer.quantized_weight())
    with kernels.count_calls() as counts:
        layer(x)
        layer(x)
    assert counts == {"layer": 2}
    with pytest.raises(ValueError, match="kind must be one of"):
        ActQuant("percentile", 8)
    with pytest.raises(ValueError, match="sign activations have 1 bit"):
        ActQuant("sign", 8)


def test_uncalibrated_layer_cannot_enter_integer_mode():
    lin = nn.Linear(8, 4)
    layer = QuantLinear(lin, SPECS["int8"], "fresh")
    with pytest.raises(ValueError, match="never calibrated"):
        layer.set_integer(layer.quantized_weight())


def test_ema_range_tracks_batch_maxima():
    act = ActQuant("tensor", 8, momentum=0.5)
    act.train()
    act.fake(torch.tensor([1.0, -4.0]))
    assert float(act.amax) == 4.0                  # first batch taken as it is
    act.fake(torch.tensor([2.0]))
    assert float(act.amax) == 3.0                  # 0.5 * 4 + 0.5 * 2
    act.eval()
    act.fake(torch.tensor([100.0]))
    assert float(act.amax) == 3.0                  # frozen in eval


def test_straight_through_gradient():
    layer, x = make_layer("log4", seed=6)
    layer.train()
    x = x.clone().requires_grad_(True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None
    # d/dx of sum(x_q @ w_q^T) with the identity STE is the column sum of the quantized weights
    wq = layer.quantized_weight().dequantize()
    torch.testing.assert_close(x.grad[0, 0], wq.sum(0), rtol=1e-12, atol=1e-12)
