"""Quantized replacements for the model's ``nn.Linear``, ``MatMul`` and tied ``nn.Embedding``.

Each module has two modes:

* **fake** (training, QAT): weights and inputs are replaced by their quantized values (computed
  by the golden quantizers) with a straight-through estimator, and the product is an ordinary
  float matmul. Its forward value is what the integer mode computes, up to float rounding of
  the dequantization.
* **int** (deployment): the module holds integer weights (from :mod:`.weights` or a packed
  model), quantizes its input on the host with ``golden.quantize_symmetric`` (or the sign, for
  1-bit activations), runs the golden kernel through :func:`lowbit.sw.quant.kernels.call` and
  dequantizes the accumulator on the host: ``y = acc * s_a * s_w[n]`` (docs/numerics.md, raw
  output). Nothing else in the model changes.

Activation scales (:class:`ActQuant`)
-------------------------------------
``tensor``  per tensor, ``s = amax / (2**(b-1) - 1)`` with ``amax`` an exponential moving average
            of the batch maximum of ``|x|``, updated in training (Wu et al.'s ranges, calibrated)
``fixed``   per tensor with a given ``amax`` (attention probabilities: ``amax = 1``)
``token``   per row (token), ``s = max|x_row| / (2**(b-1) - 1)``, computed on the fly
``sign``    1 bit per row (BMT): ``x -> +-max|x_row| / 2`` (zero maps to +)

Biases
------
For the INT and log units (per-tensor activation scale) the bias joins the accumulator as an
integer at the accumulator's scale, ``bias_int[n] = round_half_even(b[n] / (s_a * s_w[n]))``,
computed when the module enters integer mode (the packed model stores the float bias). The fake
mode rounds the bias the same way. For the XNOR unit the activation scale is per token, so the
float bias is added by the host after dequantization, and the unit's bias port carries the
integer offset correction of the 8-plane activation code (see :meth:`QuantLinear._xnor`).
"""

from __future__ import annotations

import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit.sw import golden

from . import kernels
from .kernels import MatmulSite
from . import weights as W
from .weights import BinaryWeights, IntWeights, LogWeights, RowGroups


def ste(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: forward ``value``, gradient of the identity to ``x``."""
    return x + (value.to(x.dtype) - x).detach()


class ActQuant(nn.Module):
    """Quantizer of one activation operand (see the module docstring for the kinds)."""

    KINDS = ("tensor", "fixed", "token", "sign")

    def __init__(self, kind: str, bits: int, momentum: float = 0.9, fixed_max: float = 1.0):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"activation quantizer kind must be one of {self.KINDS}, not {kind!r}")
        if kind == "sign" and bits != 1:
            raise ValueError("sign activations have 1 bit")
        self.kind, self.bits, self.momentum = kind, bits, momentum
        self.qmax = (1 << (bits - 1)) - 1 if kind != "sign" else 1
        # amax: the calibrated range (per-tensor kinds); persistent so checkpoints keep it.
        self.register_buffer("amax", torch.tensor(float(fixed_max) if kind == "fixed" else 0.0))
        self.calibrating = False  # observe even in eval mode (post-training calibration)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, bits={self.bits}"

    @property
    def per_tensor(self) -> bool:
        return self.kind in ("tensor", "fixed")

    def observe(self, x: torch.Tensor) -> None:
        """EMA of the batch max of ``|x|`` (no host sync: the first batch is taken as it is)."""
        if self.kind != "tensor" or not (self.training or self.calibrating):
            return
        m = x.detach().abs().max().to(self.amax.dtype)
        ema = self.momentum * self.amax + (1 - self.momentum) * m
        self.amax.copy_(torch.where(self.amax > 0, ema, m))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale of ``x`` [..., K]: a 0-dim tensor (per tensor) or [..., 1] (per token)."""
        if self.per_tensor:
            s = self.amax.to(x.dtype) / self.qmax
            return torch.where(s > 0, s, torch.ones_like(s))
        # max|x| per row from the row's max and min (two reads, no |x| tensor): the same value,
        # NaN included; abs_ makes an all-zero row's -0.0 the +0.0 of max|x|
        x = x.detach()
        m = torch.maximum(x.amax(-1, keepdim=True), x.amin(-1, keepdim=True).neg_()).abs_()
        if self.kind == "sign":
            return m / 2  # BMT: +-B/2 with B = max|x| (B = 0 gives 0, which is exact)
        s = m / self.qmax
        return torch.where(s > 0, s, torch.ones_like(s))

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integers and scale of ``x`` (host side of the integer path): ``x ~ q * s``."""
        s = self.scale(x)
        if self.kind == "sign":
            return torch.where(x >= 0, 1, -1).to(torch.int64), s
        return golden.quantize_symmetric(x, s, self.bits), s

    def quantize_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`quantize`'s integers left in a float tensor (the operand of the prepared
        products, :class:`lowbit.sw.golden.PreparedMatmul`)."""
        s = self.scale(x)
        if self.kind == "sign":
            return torch.where(x >= 0, 1.0, -1.0), s
        return golden.quantize_symmetric_values(x, s, self.bits), s

    def fake(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ste(x, q * s), s)`` after updating the range."""
        self.observe(x)
        q, s = self.quantize(x.detach())
        return ste(x, q.to(x.dtype) * s), s


class _TokenOperand:
    """An input of the XNOR unit quantized per token (``sign``: the bits ``x >= 0`` of
    ``a = 2u - 1``; ``token``: ``q`` of ``a = 2q + 1``) and its dequantization factor (``B/2``
    resp. ``s/2``), shared by the modules that read the same tensor: the Q, K and V projections
    of a self-attention quantize their one input once. Per-token quantization depends on the
    tensor alone (and the kind and width), so sharing it changes nothing. The last operand is
    kept while its tensor is the same memory with the same contents (as
    :meth:`QuantMatMul._quantized_b` checks)."""

    _last = None    # (weakref to the tensor's root, key, operand)

    def __init__(self, act: ActQuant, x2: torch.Tensor):
        if act.kind == "sign":          # the +-1 signs as bits: x >= 0 is +1
            self.values, self.s_eff = x2 >= 0, act.scale(x2)
        else:
            q, s = act.quantize_values(x2)
            self.values, self.s_eff = q, s / 2
        self.sign = act.kind == "sign"
        self._int8 = None

    @classmethod
    def of(cls, act: ActQuant, x2: torch.Tensor) -> "_TokenOperand":
        root = x2 if x2._base is None else x2._base
        key = (x2.data_ptr(), x2.shape, x2.stride(), x2.dtype, x2._version, act.kind, act.bits)
        last = cls._last
        if last is not None and last[0]() is root and last[1] == key:
            return last[2]
        operand = cls(act, x2)
        cls._last = (weakref.ref(root), key, operand)
        return operand

    def product(self, prep) -> torch.Tensor:
        """``prep``'s accumulator for this input (the int8 operand made once, if needed)."""
        values = self.values
        if prep.plan == "int8":
            if self._int8 is None:
                self._int8 = golden.int8_operand(values)
            values = self._int8
        return prep.signs(values) if self.sign else prep.odd(values)


def _dequantize(acc: torch.Tensor, dtype: torch.dtype, *factors: torch.Tensor) -> torch.Tensor:
    """``acc.to(dtype) * factors[0] * factors[1] ...`` (left to right, as the kernel path computes
    it; the factors have ``dtype``) for a fresh accumulator of a prepared product, scaled in
    place (no new tensor per factor)."""
    y = acc.to(dtype)
    for f in factors:
        y.mul_(f)
    return y


def _batch_flattens(t: torch.Tensor) -> bool:
    """Whether the batch dimensions of ``t [..., R, C]`` merge into one without a copy (what
    ``torch.matmul`` needs to hand it to a batched product as it is)."""
    expected = None
    for size, stride in zip(reversed(t.shape[:-2]), reversed(t.stride()[:-2])):
        if size == 1:
            continue
        if expected is not None and stride != expected:
            return False
        expected = stride * size
    return True


def _no_autocast(x: torch.Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


class QuantLinear(nn.Module):
    """``nn.Linear`` with quantized weights and inputs.

    Parameters
    ----------
    linear : the module replaced; its ``weight`` and ``bias`` parameters are taken over (a tied
        weight stays tied), so state dict names do not change.
    spec : :class:`lowbit.sw.quant.schemes.LinearSpec` (unit, weight quantizer, input quantizer).
    name : the module's path in the model (names its :class:`MatmulSite`).
    """

    def __init__(self, linear: nn.Linear, spec, name: str):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.spec = spec
        self.site = MatmulSite(name, spec.unit, spec.site_params())
        self.act = ActQuant(spec.act, spec.a_bits)
        if spec.weights == "rows":  # per-row plane counts (Chung's per-word bits), set by QAT
            self.register_buffer("row_planes", torch.zeros(self.out_features, dtype=torch.int64))
        if spec.weights == "log":   # the tensor's log scale S (0: not fitted yet)
            self.register_buffer("log_scale", torch.zeros((), dtype=torch.float64))
        self.enabled = True      # phases of QAT switch quantization on block by block
        self.mode = "fake"
        self._cache = None
        self.ints = nn.Module()  # integer-mode tensors, as non-persistent buffers
        self._prep = None        # integer mode: golden.PreparedMatmul of the weights

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, unit={self.spec.unit}, "
                f"weights={self.spec.weights}{self.spec.w_bits}, mode={self.mode}")

    # -- weights ------------------------------------------------------------------------------
    def quantized_weight(self):
        """The integer representation of the current weight (cached until the weight changes).

        Log weights keep their scale ``S`` in the ``log_scale`` buffer: the first quantization
        fits it from ``max|w|`` (``spec.refine_iters`` refinements); in training it is refined
        once more every ``LOG_REFRESH`` new weight versions, warm-started from the last value
        (refining every step would cost more than the step); in eval it is used as it is.
        """
        w = self.weight
        key = (w.data_ptr(), w._version, w.device)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._quantize(w.detach()))
        return self._cache[1]

    def _row_groups(self):
        """Row indices per plane count (per-word planes), cached until the counts change: finding
        them reads the counts back to the host, which a QAT step must not do."""
        key = (self.row_planes._version, self.row_planes.device)
        cached = getattr(self, "_groups", None)
        if cached is None or cached[0] != key:
            if int(self.row_planes.min()) < 1:
                return None     # never assigned: the quantizer says so
            cached = (key, W.row_groups(self.row_planes))
            self._groups = cached
        return cached[1]

    LOG_REFRESH = 100

    def _quantize(self, w: torch.Tensor):
        check = not self.training
        if self.spec.weights == "rows":
            return self.spec.quantize(w, self.row_planes, check=check,
                                      row_groups=self._row_groups())
        if self.spec.weights != "log":
            return self.spec.quantize(w, check=check)
        s = self.log_scale_value()
        if s <= 0:
            qw = self.spec.quantize(w, check=check)
        else:
            self._versions = getattr(self, "_versions", 0) + 1
            refresh = self.training and self._versions % self.LOG_REFRESH == 0
            qw = self.spec.quantize(w, log_scale=s, refine=1 if refresh else 0, check=check)
        self.set_log_scale(qw.log_scale)
        return qw

    def log_scale_value(self) -> float:
        """``S`` as a Python float, without a device sync per call (the buffer is the truth: a
        loaded state dict changes it, and the cached value is dropped then)."""
        cached = getattr(self, "_log_s", None)
        if cached is None or cached[0] != self.log_scale._version:
            cached = (self.log_scale._version, float(self.log_scale))
            self._log_s = cached
        return cached[1]

    def set_log_scale(self, s: float) -> None:
        if s != self.log_scale_value():
            self.log_scale.fill_(s)
        self._log_s = (self.log_scale._version, s)

    @torch.no_grad()
    def feed_back(self, error: torch.Tensor | None) -> torch.Tensor:
        """Aji & Heafield's error feedback for log weights, after an optimizer step:
        ``v = w + e``; ``w <- Q(v)``; returns the new ``e = v - Q(v)``. The quantized weight is
        cached, so the next forward reuses it (``Q(w) = w`` now). Every ``LOG_REFRESH`` calls the
        scale is refined once more (warm start)."""
        w = self.weight
        v = w.detach().to(torch.float64)
        if error is not None:
            v = v + error
        self._versions = getattr(self, "_versions", 0) + 1
        refresh = self._versions % self.LOG_REFRESH == 0
        s = self.log_scale_value()
        qw = self.spec.quantize(v, log_scale=s if s > 0 else None,
                                refine=(1 if refresh else 0) if s > 0 else None, check=False)
        self.set_log_scale(qw.log_scale)
        q = qw.dequantize()
        w.copy_(q.to(w.dtype))
        self._cache = ((w.data_ptr(), w._version, w.device), qw)
        return v - q

    # -- integer mode -------------------------------------------------------------------------
    def set_integer(self, qw, act_amax: float | torch.Tensor | None = None) -> None:
        """Enter integer mode with weights ``qw`` (IntWeights/LogWeights/BinaryWeights/RowGroups).

        ``act_amax`` overrides the calibrated input range (packed models store it).
        """
        if qw.shape != (self.out_features, self.in_features):
            raise ValueError(f"{self.site.name}: weights {qw.shape} do not fit "
                             f"({self.out_features}, {self.in_features})")
        if act_amax is not None:
            self.act.amax.copy_(torch.as_tensor(act_amax, dtype=self.act.amax.dtype))
        if self.act.per_tensor and float(self.act.amax) <= 0:
            raise ValueError(f"{self.site.name}: input range was never calibrated")
        self.ints = nn.Module()

        def reg(name, t):  # not part of the state dict: the packed format stores its own tensors
            self.ints.register_buffer(name, t, persistent=False)
        bias = None if self.bias is None else self.bias.detach().to(torch.float64).cpu()
        if isinstance(qw, (IntWeights, LogWeights)):
            reg("w", (qw.values if isinstance(qw, IntWeights) else qw.codes).cpu())
            s_a = self.act.amax.double().cpu() / self.act.qmax
            acc_scale = s_a * qw.channel_scale().cpu()
            reg("acc_scale", acc_scale)
            if bias is not None:
                pmax = (golden.int_max_product(self.spec.a_bits, qw.bits) if qw.unit == "int"
                        else golden.log_max_product(self.spec.a_bits, qw.bits))
                bound = golden.bias_bound(pmax, golden.DEFAULT_MAX_K)
                reg("bias_int", torch.round(bias / acc_scale).clamp(-bound, bound).to(torch.int64))
        else:
            parts = qw.groups if isinstance(qw, RowGroups) else [(None, qw)]
            for j, (rows, part) in enumerate(parts):
                if rows is not None:
                    reg(f"rows{j}", rows.cpu())
                reg(f"words{j}", golden.pack_bits(part.signs.cpu()))
                reg(f"alpha{j}", part.alpha.cpu())
                reg(f"scale{j}", part.scale.cpu().to(torch.float64))
                # 8-plane activations are coded as 2q+1: the unit's bias port removes the +1.
                reg(f"corr{j}", -part.integer_weights().cpu().sum(1))
            self.n_groups = len(parts)
            self.grouped = isinstance(qw, RowGroups)
            if bias is not None:
                reg("bias_f", bias)
        self._prep = self._prepare()
        self.qweight = qw
        self.mode = "int"
        self.to(self.weight.device)

    def _prepare(self, plan: str | None = None):
        """The golden kernel's operands prepared once (:class:`golden.PreparedMatmul`, ``plan``
        as there): the fast path of :meth:`forward` computes the same accumulators from them.
        Row groups become one matmul: each group's planes in its rows, missing planes with
        ``alpha = 0`` (they add exact zeros), so every row's sum is its group's."""
        ints, spec = self.ints, self.spec
        if spec.unit == "int":
            return golden.prepare_int(ints.w, getattr(ints, "bias_int", None),
                                      a_bits=spec.a_bits, w_bits=spec.w_bits, plan=plan)
        if spec.unit == "log":
            return golden.prepare_log(ints.w, getattr(ints, "bias_int", None), bits=spec.w_bits,
                                      a_bits=spec.a_bits, plan=plan)
        n = self.out_features
        planes = max(getattr(ints, f"alpha{j}").shape[0] for j in range(self.n_groups))
        words = torch.zeros(planes, n, ints.words0.shape[-1], dtype=torch.int64)
        alpha = torch.zeros(planes, n, dtype=torch.int64)
        corr = torch.zeros(n, dtype=torch.int64)
        scale = torch.zeros(n, dtype=torch.float64)
        covered = torch.zeros(n, dtype=torch.bool)
        for j in range(self.n_groups):
            rows = getattr(ints, f"rows{j}").cpu() if self.grouped else torch.arange(n)
            p = getattr(ints, f"alpha{j}").shape[0]
            words[:p, rows] = getattr(ints, f"words{j}").cpu()
            alpha[:p, rows] = getattr(ints, f"alpha{j}").cpu()
            corr[rows] = getattr(ints, f"corr{j}").cpu()
            scale[rows] = getattr(ints, f"scale{j}").cpu().to(torch.float64)
            covered[rows] = True
        if not bool(covered.all()):
            return None         # rows outside every group: only the kernel path knows them
        self.ints.register_buffer("scale_all", scale.to(ints.words0.device), persistent=False)
        sign = self.act.kind == "sign"
        return golden.prepare_xnor(words, alpha, self.in_features, None if sign else corr,
                                   a_planes=1 if sign else self.act.bits, plan=plan)

    def _fast(self, kernel: str, x2: torch.Tensor):
        """The prepared matmul on ``x2``'s device when the fast path gives the kernel's integers
        and the float results of the kernel path (float32/float64 inputs); else None."""
        prep = self._prep
        if prep is None or x2.dtype not in (torch.float32, torch.float64) or \
                not kernels.fast(kernel):
            return None
        if prep.device != x2.device:
            prep = self._prep = prep.to(x2.device)
        return prep

    def _int_unit(self, x2: torch.Tensor) -> torch.Tensor:
        """INT or log unit: the site's kernel with its parameters (``spec.site_params()``)."""
        prep = self._fast(self.site.kernel, x2)
        if prep is not None:
            acc = prep(self.act.quantize_values(x2)[0])
            return _dequantize(acc, x2.dtype, self.ints.acc_scale.to(x2.dtype))
        a, _ = self.act.quantize(x2)
        acc = kernels.call(self.site.kernel, self.site, a, self.ints.w,
                           getattr(self.ints, "bias_int", None), **self.site.params)
        return acc.to(x2.dtype) * self.ints.acc_scale.to(x2.dtype)

    def _xnor(self, x2: torch.Tensor) -> torch.Tensor:
        """XNOR unit. 1-bit inputs: one plane of signs, ``y = acc * (B/2) * s_w``. 8-bit inputs
        ``q`` (per token): the unit takes the odd integers ``2q+1`` as 8 planes, and the bias port
        adds ``-sum_k w_int[n, k]``, so ``acc = 2 * sum_k q w_int`` exactly and
        ``y = acc * (s/2) * s_w``."""
        prep = self._fast("xnor_matmul", x2)
        if prep is not None:    # every row group in one product, the same integers
            operand = _TokenOperand.of(self.act, x2)
            acc = operand.product(prep)
            y = _dequantize(acc, x2.dtype, operand.s_eff, self.ints.scale_all.to(x2.dtype))
            if hasattr(self.ints, "bias_f"):
                y.add_(self.ints.bias_f.to(x2.dtype))
            return y
        q, s = self.act.quantize(x2)                                   # [M, K], [M, 1]
        k = x2.shape[-1]
        if self.act.kind == "sign":
            a_words, s_eff = golden.pack_bits(q)[None], s              # [1, M, W]
        else:
            a_words = golden.pack_bits(golden.activation_planes(2 * q + 1, self.act.bits))
            s_eff = s / 2
        y = x2.new_zeros(x2.shape[0], self.out_features)
        for j in range(self.n_groups):
            corr = None if self.act.kind == "sign" else getattr(self.ints, f"corr{j}")
            acc = kernels.call("xnor_matmul", self.site, a_words, getattr(self.ints, f"words{j}"),
                               getattr(self.ints, f"alpha{j}"), k, corr)
            part = acc.to(x2.dtype) * s_eff * getattr(self.ints, f"scale{j}").to(x2.dtype)
            if self.grouped:
                y[:, getattr(self.ints, f"rows{j}")] = part
            else:
                y = part
        if hasattr(self.ints, "bias_f"):
            y = y + self.ints.bias_f.to(x2.dtype)
        return y

    # -- forward ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "int":
            x2 = x.reshape(-1, self.in_features)
            y = self._xnor(x2) if self.spec.unit == "xnor" else self._int_unit(x2)
            return y.reshape(*x.shape[:-1], self.out_features)
        if not self.enabled:
            return F.linear(x, self.weight, self.bias)
        with _no_autocast(x):
            dtype = torch.promote_types(x.dtype, torch.float32)
            x = x.to(dtype)
            qw = self.quantized_weight()
            w = ste(self.weight, qw.dequantize().to(dtype))
            xq, s_a = self.act.fake(x)
            bias = self.bias
            if bias is not None and self.spec.unit in ("int", "log"):
                acc_scale = s_a.to(dtype) * qw.channel_scale().to(dtype)
                bias = ste(bias, torch.round(bias.detach().to(dtype) / acc_scale) * acc_scale)
            return F.linear(xq, w.to(dtype), None if bias is None else bias.to(dtype))


class QuantMatMul(nn.Module):
    """Activation-by-activation product ``a @ b`` (Q.K^T, attention.V) on the INT unit.

    ``a`` [..., M, K] is quantized per tensor (``fixed`` range 1 for attention probabilities),
    ``b`` [..., K, N] per tensor; the golden kernel takes ``b`` transposed as its [..., N, K]
    "weights" operand (batch dimensions broadcast).
    """

    def __init__(self, spec, name: str, probs: bool):
        super().__init__()
        self.spec = spec
        self.site = MatmulSite(name, "int", {"a_bits": spec.bits, "w_bits": spec.bits})
        self.a_act = ActQuant("fixed" if probs else "tensor", spec.bits)
        self.b_act = ActQuant("tensor", spec.bits)
        self.enabled = True
        self.mode = "fake"
        self._memo = None   # integer mode: the last quantized b (see _quantized_b)

    def extra_repr(self) -> str:
        return f"unit=int, bits={self.spec.bits}, mode={self.mode}"

    def set_integer(self, a_amax=None, b_amax=None) -> None:
        for act, amax in ((self.a_act, a_amax), (self.b_act, b_amax)):
            if amax is not None:
                act.amax.copy_(torch.as_tensor(amax, dtype=act.amax.dtype))
            if float(act.amax) <= 0:
                raise ValueError(f"{self.site.name}: input range was never calibrated")
        self.mode = "int"

    def _quantized_b(self, b: torch.Tensor):
        """``b_act.quantize_values(b)``, reused while ``b`` is the same memory with the same
        contents: the cross-attention keys and values of a decode, quantized once instead of at
        every step. Same memory: the same root tensor (held weakly, so its memory cannot have
        been reused), pointer, shape, strides and dtype; same contents: its version counter
        (shared by all views, raised by every in-place write) and the range's. A reused operand
        is kept in float32 where that is exact (half the bytes for every later product)."""
        root = b if b._base is None else b._base
        key = (b.data_ptr(), b.shape, b.stride(), b.dtype, b._version, self.b_act.amax._version)
        memo = self._memo
        if memo is not None and memo[0]() is root and memo[1] == key:
            q, s = memo[2]
            if q.dtype != torch.float32 and golden.int_float32_exact(
                    b.shape[-2], self.spec.bits, self.spec.bits, b.device):
                q = q.to(torch.float32)
                self._memo = (memo[0], key, (q, s))
            return q, s
        q, s = self.b_act.quantize_values(b)
        if not _batch_flattens(q):
            # The batched product would copy it at every call (the cross-attention keys are a
            # transposed view of the projection): copied once here instead.
            q = q.contiguous()
        self._memo = (weakref.ref(root), key, (q, s))
        return q, s

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.mode == "int" and a.dtype in (torch.float32, torch.float64) and \
                kernels.fast("int_matmul"):
            qa, sa = self.a_act.quantize_values(a)
            qb, sb = self._quantized_b(b)
            acc = golden.int_matmul_values(qa, qb.transpose(-1, -2), a_bits=self.spec.bits,
                                           w_bits=self.spec.bits)
            return acc.to(a.dtype) * (sa * sb).to(a.dtype)
        if self.mode == "int":
            qa, sa = self.a_act.quantize(a)
            qb, sb = self.b_act.quantize(b.transpose(-1, -2))
            acc = kernels.call("int_matmul", self.site, qa, qb, None,
                               a_bits=self.spec.bits, w_bits=self.spec.bits)
            return acc.to(a.dtype) * (sa * sb).to(a.dtype)
        if not self.enabled:
            return a @ b
        with _no_autocast(a):
            dtype = torch.promote_types(a.dtype, torch.float32)
            aq, _ = self.a_act.fake(a.to(dtype))
            bq, _ = self.b_act.fake(b.to(dtype))
            return aq @ bq


class QuantEmbedding(nn.Module):
    """The token embedding tied to a quantized ``lm_head``: looks up the quantized table.

    Fake mode: rows of the owner's dequantized weight (straight-through). Int mode: the rows are
    decoded from the owner's integer weights at lookup time. For the XNOR unit's binary codes
    (mixed, bmt*) a lookup gathers each id's packed sign words, plane scales ``alpha`` and row
    scale -- the very tensors the output layer's XNOR matmul uses -- and decodes only those
    rows: ``row = scale * sum_i alpha_i * unpack(words_i)``; the fast path decodes every row
    once, on the first lookup, and looks up the decoded rows afterwards (the same floats). Other
    units keep the dequantized table (``table``), i.e. host-side lookup plus dequantization.
    """

    def __init__(self, emb: nn.Embedding, owner: QuantLinear):
        super().__init__()
        if owner.weight is not emb.weight:
            raise ValueError("QuantEmbedding needs the embedding tied to the quantized lm_head")
        self.weight = emb.weight
        self.padding_idx = emb.padding_idx
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        object.__setattr__(self, "owner", owner)  # not a submodule: no second state-dict entry
        self.mode = "fake"

    def set_integer(self) -> None:
        owner = self.owner
        self.packed = owner.spec.unit == "xnor"
        if self.packed:
            # id -> (its plane-count group, its row within that group's packed tensors)
            group = torch.zeros(self.num_embeddings, dtype=torch.int64)
            index = torch.arange(self.num_embeddings, dtype=torch.int64)
            for j in range(owner.n_groups):
                if owner.grouped:
                    rows = getattr(owner.ints, f"rows{j}").cpu()
                    group[rows] = j
                    index[rows] = torch.arange(len(rows))
            dev = self.weight.device
            self.register_buffer("row_group", group.to(dev), persistent=False)
            self.register_buffer("row_index", index.to(dev), persistent=False)
            self.register_buffer("decoded", None, persistent=False)   # made on first lookup
        else:
            self.register_buffer("table", owner.qweight.dequantize().to(self.weight.device),
                                 persistent=False)
        self.mode = "int"

    def _gather_packed(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` [L] decoded from the owner's packed codes -> [L, D] float64."""
        ints, k = self.owner.ints, self.embedding_dim
        out = torch.zeros(ids.numel(), k, dtype=torch.float64, device=ids.device)
        group, index = self.row_group[ids], self.row_index[ids]
        for j in range(self.owner.n_groups):
            sel = torch.nonzero(group == j).flatten()
            if not sel.numel():
                continue
            rows = index[sel]
            signs = golden.unpack_bits(getattr(ints, f"words{j}")[:, rows], k)   # [P, L, K]
            alpha = getattr(ints, f"alpha{j}")[:, rows]                           # [P, L]
            values = (signs * alpha.unsqueeze(-1)).sum(0)                          # [L, K] ints
            out[sel] = values.to(torch.float64) * getattr(ints, f"scale{j}")[rows].unsqueeze(-1)
        return out

    def _decoded_table(self) -> torch.Tensor | None:
        """Every row decoded once (:meth:`_gather_packed` of all ids, float64), kept for the
        lookups of the fast path: a row is computed elementwise from its own codes, so a lookup
        in it gives the same floats. None under ``LOWBIT_REFERENCE_KERNELS=1`` (the lookup
        decodes its rows, as the kernels' path always did)."""
        if kernels.reference_forced():
            return None
        table = getattr(self, "decoded", None)
        if table is None or table.device != self.row_group.device:
            ids = torch.arange(self.num_embeddings, device=self.row_group.device)
            self.register_buffer("decoded", self._gather_packed(ids), persistent=False)
            table = self.decoded
        return table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.mode == "int":
            if self.packed:
                table = self._decoded_table()
                rows = (self._gather_packed(ids.reshape(-1)) if table is None
                        else table.index_select(0, ids.reshape(-1)))
                return rows.reshape(*ids.shape, self.embedding_dim).to(self.weight.dtype)
            return F.embedding(ids, self.table, self.padding_idx)
        if not self.owner.enabled:
            return F.embedding(ids, self.weight, self.padding_idx)
        w = ste(self.weight, self.owner.quantized_weight().dequantize().to(self.weight.dtype))
        return F.embedding(ids, w, self.padding_idx)
