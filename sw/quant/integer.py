"""The integer-only Transformer: every operation of the decode on integers (docs/numerics.md).

Schemes ``int8i`` and ``logBi`` (:mod:`.schemes`) quantize the matmuls like ``int8`` / ``logB``
and, in addition, replace every operation between them by the golden integer operations of
:mod:`lowbit.sw.golden_ops`: the embedding lookup, the requantization of each matmul's
accumulator into the next operation's input, the attention softmax, the residual adds, the
LayerNorms, the ReLU and the output scores. From token ids to token ids nothing is a float.

Data flow of one post-norm encoder layer (decoder layers add the cross-attention the same way)::

    x (int8, scale s_x) --q/k/v_proj--> int32 --requantize--> int8 q, k, v
    q.k^T --requantize--> 16-bit log2-domain scores --softmax--> int8 probabilities (1/127)
    probs.v --requantize--> int8 ctx --out_proj--> int32
    residual_add(x, out) -> 16-bit t (scale s_t) --layernorm--> int8 x' (scale s_x')
    x' --fc1--> int32 --requantize with ReLU--> int8 h --fc2--> int32
    residual_add(x', fc2) -> 16-bit --layernorm--> int8 (the next layer's input)

Every scale is a calibrated per-tensor range (:class:`~.modules.ActQuant`): one for each
embedding output, each LayerNorm's input sum (16 bit) and output (8 bit), and the inputs of
Q.K^T, attention.V, out_proj and fc2 (the ranges the ``int8`` scheme already has). When the model
enters integer mode (:meth:`IntegerTransformer.set_integer_only`) the scales become integer
multipliers and shifts, LayerNorm gains and offsets, and integer embedding and position tables
(``golden.requant_params``, ``golden_ops.layernorm_params``, ``golden_ops.position_table``);
after that every tensor the decode touches is an integer tensor.

Training (fake mode) runs the same integer operations on the integers of the current weights
and ranges, and passes gradients straight through to the float operation each one replaces
(the value of every activation is the integer decode's, its gradient the float model's).
Activations travel between operations as float tensors whose values lie on their scale's grid
(``q * s``), so the float model's dropout applies unchanged; each operation recovers its
integers by rounding ``x / s``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit import LowbitError
from lowbit.sw import golden
from lowbit.sw import golden_ops as gops
from lowbit.sw.model import Transformer

from . import kernels
from .modules import ActQuant, QuantLinear, ste
from .weights import IntWeights, LogWeights

ACT_BITS = 8             # matmul inputs, LayerNorm and embedding outputs
SUM_BITS = 16            # residual sums (LayerNorm inputs)
PROB_BITS = 8            # attention probabilities: 0..127 at scale 1/127
LN2_OVER_SCORE_UNIT = math.log(2.0) / (1 << gops.SCORE_FRAC_BITS)  # score unit in nats

# Operations that :attr:`IntegerTransformer.float_ops` can leave in float (fake mode only), to
# measure what each integer operation costs on its own.
OPS = ("embedding", "softmax", "residual", "layernorm", "scores")


class IntLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` with the ranges of its integer input (16-bit residual sum) and output."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__(norm.normalized_shape, eps=norm.eps)
        self.in_act = ActQuant("tensor", SUM_BITS)
        self.out_act = ActQuant("tensor", ACT_BITS)


def _scale(act: ActQuant) -> torch.Tensor:
    """The per-tensor scale of a range as a float64 0-dim tensor (1 when not calibrated)."""
    s = act.amax.detach().to(torch.float64) / act.qmax
    return torch.where(s > 0, s, torch.ones_like(s))


def _ints(x: torch.Tensor, act: ActQuant) -> torch.Tensor:
    """The integers of a fake-mode activation on ``act``'s grid (exact: ``x = q * s``)."""
    return torch.round(x.detach().to(torch.float64) / _scale(act)).to(torch.int64)


class IntegerTransformer(Transformer):
    """A post-norm ReLU Transformer whose decode is integer-only (see the module docstring).

    Built by :func:`lowbit.sw.quant.qat.prepare_model` for an integer-only scheme, which swaps
    the matmuls for :class:`~.modules.QuantLinear` / :class:`~.modules.QuantMatMul` as usual.
    ``integer_only`` is False while training (fake mode: float tensors on integer grids) and True
    after :meth:`set_integer_only` (integer tensors only; :meth:`search` then decodes with the
    integer greedy and beam search of :mod:`.intdecode`).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        problems = [what for what, bad in (
            ("pre-norm", cfg.normalize_before), ("BMT norms", cfg.bmt_norms),
            (f"activation {cfg.activation}", cfg.activation != "relu"),
            ("untied embeddings", not cfg.tie_word_embeddings)) if bad]
        if problems:
            raise LowbitError(f"integer-only decoding supports post-norm ReLU models with tied "
                              f"embeddings, not {', '.join(problems)}")
        for stack in (self.model.encoder, self.model.decoder):
            stack.embed_act = ActQuant("tensor", ACT_BITS)
            for layer in stack.layers:
                for name, child in list(layer.named_children()):
                    if isinstance(child, nn.LayerNorm):
                        setattr(layer, name, IntLayerNorm(child))
        self.integer_only = False
        self.float_ops: set = set()    # fake mode: operations left in float (ablation)
        self.int_consts = nn.Module()  # integer mode: constants, as non-persistent buffers
        self._const_names: dict = {}
        self._prepared: dict = {}      # integer mode: golden.PreparedMatmul per matmul site

    @classmethod
    def from_float(cls, model: Transformer) -> "IntegerTransformer":
        """A new integer-only model with ``model``'s weights (ranges not calibrated yet)."""
        new = cls(model.config)
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any(not k.endswith(".amax") for k in missing):
            raise LowbitError(f"cannot build the integer-only model: missing {missing}, "
                              f"unexpected {unexpected}")
        return new

    # -- integer mode ---------------------------------------------------------------------------
    @torch.no_grad()
    def set_integer_only(self) -> None:
        """Compute every integer constant and switch to integer-only decoding.

        The constants are computed by the same code as in fake mode, on the first (and only)
        call of each operation: a one-token encode and decode step here visits every one. They
        are buffers, so ``model.to(device)`` moves them.
        """
        ops = [m for m in self.modules() if isinstance(m, QuantLinear)]
        if not ops or any(m.mode != "int" for m in ops):
            raise LowbitError("set_integer_only needs the quantized matmuls in integer mode")
        self.eval()
        self.int_consts = nn.Module()
        self._const_names = {}
        self._prepared = {}
        self.integer_only = True
        dev = next(self.parameters()).device
        cfg = self.config
        src = torch.full((1, 1), cfg.eos_token_id, dtype=torch.int64, device=dev)
        memory = self.encode(src)
        self.decode_step(torch.full((1,), cfg.decoder_start_token_id, dtype=torch.int64,
                                    device=dev), memory, self.src_mask(src), self.new_cache(), 0)

    def _const(self, key: str, build):
        """``build()`` in fake mode; in integer mode the cached result (built on first use)."""
        if not self.integer_only:
            return build()
        names = self._const_names.get(key)
        if names is None:
            value = build()
            names = {}
            for field, t in value.items():
                name = f"c{len(self._const_names)}_{field}"
                self.int_consts.register_buffer(name, torch.as_tensor(t), persistent=False)
                names[field] = name
            self._const_names[key] = names
        return {field: getattr(self.int_consts, name) for field, name in names.items()}

    # -- constants ------------------------------------------------------------------------------
    def _weights(self, m: QuantLinear):
        """``(integer weights, code tensor for the kernel, per-channel scale [N])``."""
        if self.integer_only:
            qw = m.qweight
            codes = m.ints.w
        else:
            qw = m.quantized_weight()
            codes = qw.values if isinstance(qw, IntWeights) else qw.codes
        if isinstance(qw, IntWeights):
            values = codes
        elif isinstance(qw, LogWeights):
            values = golden.log_weight_values(codes, qw.bits, check=self.integer_only)
        else:
            raise LowbitError(f"{m.site.name}: integer-only decoding needs INT or log weights, "
                              f"not {type(qw).__name__}")
        return values, codes, qw.channel_scale().to(codes.device)

    def _acc_consts(self, m: QuantLinear, s_in, bias=None) -> dict:
        """Weights, integer bias and accumulator scale of ``m`` with input scale ``s_in``."""
        values, codes, s_w = self._weights(m)
        acc_scale = s_in.to(s_w.device) * s_w
        bias = m.bias if bias is None else bias
        out = {"values": values, "codes": codes, "acc_scale": acc_scale}
        if bias is not None:
            unit_max = (golden.int_max_product(m.spec.a_bits, m.spec.w_bits) if m.spec.unit == "int"
                        else golden.log_max_product(m.spec.a_bits, m.spec.w_bits))
            bound = golden.bias_bound(unit_max, golden.DEFAULT_MAX_K)
            b = bias.detach().to(torch.float64).reshape(-1).to(s_w.device)
            out["bias"] = torch.round(b / acc_scale).clamp(-bound, bound).to(torch.int64)
        return out

    def _requant(self, scale) -> tuple:
        return golden.requant_params(scale, check=self.integer_only)

    # -- the matmul kernels ---------------------------------------------------------------------
    def _accumulate(self, m: QuantLinear, a: torch.Tensor, c: dict) -> torch.Tensor:
        """``a @ W.T + bias`` of ``m`` on its unit (through the kernel seam in integer mode)."""
        bias = c.get("bias")
        name, kw = m.site.kernel, m.site.params
        if self.integer_only:
            if kernels.fast(name):
                return self._prepared_product(m, name, a, c, kw)
            return kernels.call(name, m.site, a, c["codes"], bias, **kw)
        return getattr(golden, name)(a, c["codes"], bias, check=False, **kw)

    def _prepared_product(self, m: QuantLinear, kernel: str, a: torch.Tensor, c: dict,
                          kw: dict) -> torch.Tensor:
        """The kernel's accumulator from :class:`golden.PreparedMatmul` (the same integers, see
        docs/numerics.md), built once per site from the constants the kernel would get."""
        prep = self._prepared.get(m.site.name)
        if prep is None:
            build = golden.prepare_int if kernel == "int_matmul" else golden.prepare_log
            prep = self._prepared[m.site.name] = build(c["codes"], c.get("bias"), **kw)
        if prep.device != a.device:
            prep = self._prepared[m.site.name] = prep.to(a.device)
        acc = prep.integers(a.reshape(-1, a.shape[-1]))
        return acc.view(*a.shape[:-1], acc.shape[-1])

    def _matmul(self, mm, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b.T`` of two activations on the INT unit (Q.K^T, attention.V)."""
        kw = {"a_bits": mm.spec.bits, "w_bits": mm.spec.bits}
        if self.integer_only:
            if kernels.fast("int_matmul"):    # exact float product (golden.int_matmul_values)
                acc = golden.int_matmul_values(a.to(torch.float32), b.to(torch.float32), **kw)
                return acc.to(torch.int64)
            return kernels.call("int_matmul", mm.site, a, b, None, **kw)
        return golden.int_matmul(a, b, None, check=False, **kw)

    @staticmethod
    def _unchecked(op: str, owned: bool = False) -> dict:
        """Keyword arguments for operation ``op`` through :func:`kernels.call_op`: while it is
        the golden operation (:func:`kernels.fast`) its operand checks are skipped (every
        operand has its declared width by construction: the constants were checked when built,
        the activations come from the previous operation; the checks only raise). ``owned``:
        the first operand is an accumulator just made by a matmul; while the matmul kernels are
        the golden ones too (nobody else can hold it), the golden requantizer may overwrite it
        with its result (the same integers)."""
        if not kernels.fast(op):
            return {}
        if owned and all(kernels.fast(k) for k in kernels.matmul_kernels()):
            return {"check": False, "overwrite": True}
        return {"check": False}

    @staticmethod
    def _ref_linear(m: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        """The float product that fake mode's gradient follows (weights straight-through)."""
        w = ste(m.weight, m.quantized_weight().dequantize().to(x.dtype))
        return F.linear(x, w, m.bias)

    # -- units ----------------------------------------------------------------------------------
    def _linear(self, m: QuantLinear, x, in_act: ActQuant, out_act: ActQuant, relu=False):
        """``m(x)`` requantized into ``out_act``'s range (ReLU first when asked): int8 -> int8."""
        def consts():
            c = self._acc_consts(m, _scale(in_act))
            c["mult"], c["shift"] = self._requant(c.pop("acc_scale") / _scale(out_act))
            return c

        if self.integer_only:
            name = f"{m.site.name}.linear"
            c = self._const(name, consts)
            return kernels.call_op("requantize", name, self._accumulate(m, x, c), c["mult"],
                                   c["shift"], out_bits=ACT_BITS, relu=relu,
                                   **self._unchecked("requantize", owned=True))
        if m.act is not in_act:   # the packed model stores each layer's input range
            m.act.amax.copy_(in_act.amax)
        ref = self._ref_linear(m, x)
        ref = F.relu(ref) if relu else ref
        out_act.observe(ref)
        c = consts()
        y = golden.requantize(self._accumulate(m, _ints(x, in_act), c), c["mult"], c["shift"],
                              out_bits=ACT_BITS, relu=relu, check=False)
        return ste(ref, y.to(torch.float64) * _scale(out_act))

    def _attention(self, attn, x, kv, mask, cache, static_kv, x_act, kv_act):
        """Multi-head attention from ``x`` to ``kv`` -> the context (heads merged), on the grid
        of ``attn.out_proj``'s input range."""
        q = attn._split(self._linear(attn.q_proj, x, x_act, attn.qk.a_act))
        if static_kv and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            src = x if kv is None else kv
            k = attn._split(self._linear(attn.k_proj, src, kv_act, attn.qk.b_act))
            v = attn._split(self._linear(attn.v_proj, src, kv_act, attn.av.b_act))
            if self.integer_only and kernels.fast("int_matmul"):
                # the operands of _matmul's float products (8-bit integers, exact in float32)
                # converted once: the cache keeps and reorders them at half the bytes of int64
                k, v = k.to(torch.float32), v.to(torch.float32)
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        if mask is not None:
            mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        probs = self._softmax(attn, q, k, mask)
        if not self.integer_only:
            probs = F.dropout(probs, p=attn.dropout, training=self.training)
        ctx = self._attend(attn, probs, v)
        b, _, tq, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, tq, attn.heads * attn.head_dim)

    def _softmax(self, attn, q, k, mask):
        """Q.K^T / sqrt(Dh), requantized into the log2 domain, integer softmax -> probabilities
        0..127 (scale 1/127)."""
        qk = attn.qk

        def consts():
            scale = _scale(qk.a_act) * _scale(qk.b_act) * attn.scaling
            m, s = self._requant(gops.log2_domain_scale(scale, gops.SOFTMAX_FRAC_BITS))
            return {"mult": m, "shift": s}

        if self.integer_only:
            name = f"{qk.site.name}.softmax"
            c = self._const(name, consts)
            z = kernels.call_op("requantize", f"{qk.site.name}.scores", self._matmul(qk, q, k),
                                c["mult"], c["shift"], out_bits=16,
                                **self._unchecked("requantize", owned=True))
            return kernels.call_op("softmax", name, z, mask, out_bits=PROB_BITS,
                                   **self._unchecked("softmax"))
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        ref = F.softmax(scores, dim=-1)
        if "softmax" in self.float_ops:
            return ref
        c = consts()
        acc = self._matmul(qk, _ints(q, qk.a_act), _ints(k, qk.b_act))
        z = golden.requantize(acc, c["mult"], c["shift"], out_bits=16, check=False)
        p = gops.softmax(z, mask, out_bits=PROB_BITS, check=False)
        return ste(ref, p.to(torch.float64) / ((1 << (PROB_BITS - 1)) - 1))

    def _attend(self, attn, probs, v):
        """probabilities . V, requantized into ``out_proj``'s input range."""
        av, out_act = attn.av, attn.out_proj.act
        p_scale = 1.0 / ((1 << (PROB_BITS - 1)) - 1)

        def consts():
            m, s = self._requant(p_scale * _scale(av.b_act) / _scale(out_act))
            return {"mult": m, "shift": s}

        if self.integer_only:
            name = f"{av.site.name}.attend"
            c = self._const(name, consts)
            acc = self._matmul(av, probs, v.transpose(-1, -2))
            return kernels.call_op("requantize", name, acc, c["mult"], c["shift"],
                                   out_bits=ACT_BITS, **self._unchecked("requantize", owned=True))
        ref = probs @ v
        out_act.observe(ref)
        c = consts()
        p = torch.round(probs.detach().to(torch.float64) / p_scale).to(torch.int64)
        acc = self._matmul(av, p, _ints(v, av.b_act).transpose(-1, -2))
        y = golden.requantize(acc, c["mult"], c["shift"], out_bits=ACT_BITS, check=False)
        return ste(ref, y.to(torch.float64) * _scale(out_act))

    def _residual_norm(self, x, x_act, m: QuantLinear, h, norm: IntLayerNorm):
        """``norm(x + dropout(m(h)))``: the residual sum in 16 bits, the integer LayerNorm, the
        result in ``norm.out_act``'s range. ``h`` is on the grid of ``m``'s input range."""
        def sum_consts():
            c = self._acc_consts(m, _scale(m.act))
            s_t = _scale(norm.in_act)
            c["mult_x"], c["shift_x"] = self._requant(_scale(x_act) / s_t)
            c["mult"], c["shift"] = self._requant(c.pop("acc_scale") / s_t)
            return c

        def norm_consts():
            g, b, shift, eps = gops.layernorm_params(norm.weight, norm.bias, _scale(norm.in_act),
                                                     _scale(norm.out_act), norm.eps)
            return {"g": g, "b": b, "shift": shift, "eps": eps}

        if self.integer_only:
            c = self._const(f"{m.site.name}.residual", sum_consts)
            t = kernels.call_op("residual_add", f"{m.site.name}.residual", x, c["mult_x"],
                                c["shift_x"], self._accumulate(m, h, c), c["mult"], c["shift"],
                                out_bits=SUM_BITS, **self._unchecked("residual_add"))
            n = self._const(f"{m.site.name}.layernorm", norm_consts)
            return kernels.call_op("layernorm", f"{m.site.name}.layernorm", t, n["g"], n["b"],
                                   n["shift"], n["eps"], in_bits=SUM_BITS, out_bits=ACT_BITS,
                                   **self._unchecked("layernorm"))
        f_ref = self._ref_linear(m, h)
        acc = self._accumulate(m, _ints(h, m.act), self._acc_consts(m, _scale(m.act)))
        p = self.config.dropout if self.training else 0.0
        if p > 0:  # the float model's dropout on the sub-layer output, on both paths
            keep = (torch.rand_like(f_ref) >= p).to(f_ref.dtype) / (1 - p)
            f_ref = f_ref * keep
            acc = torch.round(acc.to(torch.float64) * keep.detach().to(torch.float64))
            acc = acc.to(torch.int64)
        t_ref = x + f_ref
        norm.in_act.observe(t_ref)
        s_t = _scale(norm.in_act)
        if "residual" in self.float_ops:   # the float sum, quantized once
            t_int = golden.quantize_symmetric(t_ref.detach().to(torch.float64), s_t, SUM_BITS)
        else:
            c = sum_consts()
            t_int = gops.residual_add(_ints(x, x_act), c["mult_x"], c["shift_x"], acc,
                                      c["mult"], c["shift"], out_bits=SUM_BITS, check=False)
        t_ref = ste(t_ref, t_int.to(torch.float64) * s_t)
        y_ref = F.layer_norm(t_ref, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        norm.out_act.observe(y_ref)
        if "layernorm" in self.float_ops:  # the float LayerNorm's output, quantized
            y = golden.quantize_symmetric(y_ref.detach().to(torch.float64), _scale(norm.out_act),
                                          ACT_BITS)
        else:
            n = norm_consts()
            y = gops.layernorm(t_int, n["g"], n["b"], n["shift"], n["eps"], in_bits=SUM_BITS,
                               out_bits=ACT_BITS, check=False)
        return ste(y_ref, y.to(torch.float64) * _scale(norm.out_act))

    # -- embedding and output -------------------------------------------------------------------
    def _embed_int(self, ids: torch.Tensor, offset: int, act: ActQuant) -> torch.Tensor:
        """Token embedding * sqrt(D) + position as integers in ``act``'s range (B, L) -> (B, L, D)."""
        head = self.lm_head

        def consts():
            values, _, s_w = self._weights(head)
            m, s = self._requant(s_w * self.embed_scale / _scale(act))
            pos = gops.position_table(self.positions.to(torch.float64), _scale(act), ACT_BITS)
            return {"table": values, "mult": m, "shift": s, "pos": pos}

        name = "encoder" if act is self.model.encoder.embed_act else "decoder"
        if self.integer_only:
            c = self._const(f"{name}.embedding", consts)
            return kernels.call_op("embedding", f"{name}.embedding", ids, c["table"], c["mult"],
                                   c["shift"], c["pos"], offset, out_bits=ACT_BITS,
                                   **self._unchecked("embedding"))
        ref = (self.model.shared(ids) * self.embed_scale
               + self.positions[offset:offset + ids.shape[1]].to(torch.float32))
        act.observe(ref)
        if "embedding" in self.float_ops:
            q = golden.quantize_symmetric(ref.detach().to(torch.float64), _scale(act), ACT_BITS)
        else:
            c = consts()
            q = gops.embedding(ids, c["table"], c["mult"], c["shift"], c["pos"], offset,
                               out_bits=ACT_BITS, check=False)
        x = ste(ref, q.to(torch.float64) * _scale(act))
        return F.dropout(x, p=self.config.dropout, training=self.training)

    def _scores(self, y: torch.Tensor, y_act: ActQuant) -> torch.Tensor:
        """Output layer: integer scores in the log2 domain (2**-16 units, 32 bit) in integer
        mode; in fake mode the same scores in natural-log units (float logits)."""
        head = self.lm_head

        def consts():
            c = self._acc_consts(head, _scale(y_act), bias=self.final_logits_bias)
            scale = gops.log2_domain_scale(c.pop("acc_scale"), gops.SCORE_FRAC_BITS)
            c["mult"], c["shift"] = self._requant(scale)
            return c

        if self.integer_only:
            c = self._const("lm_head.scores", consts)
            return kernels.call_op("requantize", "lm_head.scores", self._accumulate(head, y, c),
                                   c["mult"], c["shift"], out_bits=gops.SCORE_BITS,
                                   **self._unchecked("requantize", owned=True))
        if head.act is not y_act:
            head.act.amax.copy_(y_act.amax)
        ref = self._ref_linear(head, y) + self.final_logits_bias
        if "scores" in self.float_ops:
            return ref
        c = consts()
        z = golden.requantize(self._accumulate(head, _ints(y, y_act), c), c["mult"], c["shift"],
                              out_bits=gops.SCORE_BITS, check=False)
        return ste(ref, z.to(torch.float64) * LN2_OVER_SCORE_UNIT)

    # -- the model's pieces ---------------------------------------------------------------------
    def _fake(self, fn, *args):
        """Run a fake-mode piece in float32 outside autocast (the integers are exact anyway)."""
        if self.integer_only:
            return fn(*args)
        dev = next(self.parameters()).device
        with torch.autocast(device_type=dev.type, enabled=False):
            return fn(*args)

    def memory_act(self) -> ActQuant:
        """The range of the encoder output (the last encoder LayerNorm's output)."""
        layers = self.model.encoder.layers
        return layers[-1].final_layer_norm.out_act if len(layers) else self.model.encoder.embed_act

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) encoder output (int8 integers, or their fake-mode values)."""
        return self._fake(self._encode, src)

    def _attention_block(self, attn, norm, x, act, kv=None, kv_act=None, mask=None, cache=None,
                         static_kv=False):
        """``norm(x + attention(x, kv))``: the block's output and its range."""
        ctx = self._attention(attn, x, kv, mask, cache, static_kv, act, kv_act or act)
        return self._residual_norm(x, act, attn.out_proj, ctx, norm), norm.out_act

    def _ffn_block(self, layer, x, act):
        """``final_layer_norm(x + fc2(relu(fc1(x))))``: the block's output and its range."""
        h = self._linear(layer.fc1, x, act, layer.fc2.act, relu=True)
        x = self._residual_norm(x, act, layer.fc2, h, layer.final_layer_norm)
        return x, layer.final_layer_norm.out_act

    def _encode(self, src):
        mask = self.src_mask(src)
        act = self.model.encoder.embed_act
        x = self._embed_int(src, 0, act)
        for layer in self.model.encoder.layers:
            x, act = self._attention_block(layer.self_attn, layer.self_attn_layer_norm, x, act,
                                           mask=mask)
            x, act = self._ffn_block(layer, x, act)
        return x

    def decode(self, tgt_in, memory, src_mask, cache=None, offset: int = 0):
        """Scores of the next tokens: (B, T) ids -> (B, T, V): int64 log2-domain scores in
        integer mode, float logits in fake mode."""
        return self._fake(self._decode, tgt_in, memory, src_mask, cache, offset)

    def _decode(self, tgt_in, memory, src_mask, cache, offset):
        t = tgt_in.shape[1]
        tgt_mask = None
        if t > 1:
            tgt_mask = torch.ones(t, offset + t, dtype=torch.bool,
                                  device=tgt_in.device).triu(offset + 1)
        act = self.model.decoder.embed_act
        y = self._embed_int(tgt_in, offset, act)
        for i, layer in enumerate(self.model.decoder.layers):
            self_cache = cross_cache = None
            if cache is not None:
                self_cache = cache[i].setdefault("self", {})
                cross_cache = cache[i].setdefault("cross", {})
            y, act = self._attention_block(layer.self_attn, layer.self_attn_layer_norm, y, act,
                                           mask=tgt_mask, cache=self_cache)
            y, act = self._attention_block(layer.encoder_attn, layer.encoder_attn_layer_norm, y,
                                           act, memory, self.memory_act(), src_mask, cross_cache,
                                           static_kv=True)
            y, act = self._ffn_block(layer, y, act)
        return self._scores(y, act)

    def embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        raise LowbitError("the integer-only model embeds inside encode/decode")

    def pick_token(self, scores: torch.Tensor) -> torch.Tensor:
        """Greedy decoding's choice: ``golden_ops.argmax`` of the integer scores in integer mode
        (ties: lowest id), the float logits' argmax otherwise."""
        if self.integer_only:
            return kernels.call_op("argmax", "lm_head.argmax", scores, check=False)
        return scores.argmax(-1)

    def search(self, src: torch.Tensor, opts) -> list[list[int]]:
        """Decode a batch: the integer greedy / beam search in integer mode, the float ones
        (on the fake-mode logits) otherwise."""
        if self.integer_only:
            from . import intdecode

            return intdecode.decode_batch(self, src, opts)
        from lowbit.sw import decode

        return (decode.greedy_search(self, src, opts) if opts.beam == 1
                else decode.beam_search(self, src, opts))
