"""The float weights a quantized model computes with, for exports to float runtimes.

A quantized ``nn.Linear`` computes ``y = Q(x) . W_q^T + b_q``: ``W_q`` is its quantized weight
(:meth:`~lowbit.sw.quant.weights.IntWeights.dequantize` and friends) and ``b_q`` the bias as the
unit adds it (for the INT and log units the integer bias at the accumulator's scale,
``bias_int * s_a * s_w``; for the XNOR unit the float bias). :func:`float_state` gives ``W_q`` and
``b_q`` under the plain model's parameter names, so a float runtime loading them applies the
golden model's weights exactly (up to the rounding of the dtype it stores them in).

What a float model cannot represent is ``Q(x)``: the quantization of activations (matmul
inputs, Q.K^T and attention.V operands). A float export of a scheme that quantizes activations
therefore translates close to, not exactly like, the golden model (docs/nmt.md gives the BLEU).
"""

from __future__ import annotations

import torch

from .modules import QuantLinear, QuantMatMul


def quantized_linear(m: QuantLinear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``[N, K]`` and bias ``[N]`` (float64, CPU) that ``m`` applies to its input.

    Integer mode: the golden model's dequantized weights and its (clamped) integer bias times
    the accumulator scale. Fake-quant mode: what :meth:`QuantLinear.forward` uses in eval mode.
    A module with quantization switched off (an early QAT phase) applies its float weights.
    """
    bias = None if m.bias is None else m.bias.detach().to("cpu", torch.float64)
    if m.mode == "int":
        w = m.qweight.dequantize()
        if hasattr(m.ints, "bias_int"):
            bias = m.ints.bias_int.to(torch.float64) * m.ints.acc_scale
    elif m.enabled:
        qw = m.quantized_weight()
        w = qw.dequantize()
        if bias is not None and m.spec.unit in ("int", "log"):
            acc_scale = m.act.scale(torch.zeros((), dtype=torch.float64)).cpu() * qw.channel_scale().cpu()
            bias = torch.round(bias / acc_scale) * acc_scale
    else:
        w = m.weight
    return w.detach().to("cpu", torch.float64), bias


def float_state(model) -> dict[str, torch.Tensor]:
    """The tensors ``model`` computes with, under the plain :class:`~lowbit.sw.model.Transformer`'s
    state-dict names, on the CPU; a tied ``lm_head.weight`` is left out (``model.shared.weight``
    holds it).

    For a plain model this is its state dict. For a quantized one (packed or fake-quant) each
    quantized linear's weight and bias are replaced by :func:`quantized_linear`'s (float64), the
    tied embedding becomes the dequantized output matrix (the table the golden model looks up),
    and the quantizers' own tensors (activation ranges, log scales, plane counts) are dropped.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantMatMul)):
            for key in m.state_dict():
                if key not in ("weight", "bias"):
                    state.pop(f"{name}.{key}")
        if isinstance(m, QuantLinear):
            state[f"{name}.weight"], bias = quantized_linear(m)
            if bias is not None:
                state[f"{name}.bias"] = bias
    if model.config.tie_word_embeddings:
        state["model.shared.weight"] = state.pop("lm_head.weight")
    return state
