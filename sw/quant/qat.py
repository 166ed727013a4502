"""Turning a float model into a quantized one, and the hooks of quantization-aware training.

* :func:`prepare_model` swaps a :class:`~lowbit.sw.model.Transformer`'s ``nn.Linear``/``MatMul``
  modules (and the tied embedding) for the quantized modules of a scheme, in fake-quant mode.
  BMT schemes first rebuild the model with BMT's extra LayerNorms (new norms start at identity
  affine parameters; everything else is copied).
* :class:`QATHooks` gives ``lowbit train`` its ``transform_model`` and ``after_step`` callbacks:
  QAT phases (Chung et al.: embedding, then decoder, then encoder; BMT: float with the new
  norms, then binarized) and Aji & Heafield's error feedback for log weights.
* :func:`calibrate` sets activation ranges from training batches (post-training quantization).
* :func:`to_integer` switches every quantized module to integer mode (golden kernels).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from lowbit import LowbitError

from .integer import IntegerTransformer
from .modules import ActQuant, QuantEmbedding, QuantLinear, QuantMatMul
from .schemes import Scheme, block_of, get_scheme, group_of, with_word_planes, word_cluster_planes


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quant_modules(model: nn.Module):
    """``(name, module)`` of every quantized module, in model order."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (QuantLinear, QuantMatMul, QuantEmbedding))]


def scheme_of(model: nn.Module) -> Scheme | None:
    """The scheme a prepared model was built for (from ``config.extra['qat']``)."""
    info = model.config.extra.get("qat")
    return None if not info else get_scheme(info["scheme"], info)


def prepare_model(model, scheme: Scheme | str):
    """Return ``model`` with the scheme's quantized modules (fake-quant mode).

    The model's config records the scheme in ``extra['qat']`` so a saved checkpoint is rebuilt
    the same way by :func:`lowbit.sw.checkpoint.load_model`. BMT schemes return a new model
    object (with ``bmt_norms``), the others modify ``model`` in place.
    """
    from lowbit.sw.model import MatMul, Transformer

    cfg = model.config
    old = cfg.extra.get("qat")
    if isinstance(scheme, str):  # a saved model's recorded options rebuild it as it was made
        scheme = get_scheme(scheme, old if old and old.get("scheme") == scheme else None)
    if old:
        if old["scheme"] != scheme.name:
            return _switch_inputs(model, get_scheme(old["scheme"], old), scheme)
        if quant_modules(model):
            return model
    if scheme.bmt_norms and not cfg.bmt_norms:
        cfg.bmt_norms = True  # mutate in place: the caller's config object stays the model's
        new = Transformer(cfg)
        missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
        if unexpected or any("norm" not in k for k in missing):
            raise LowbitError(f"cannot add BMT norms: missing {missing}, unexpected {unexpected}")
        model = new
    if scheme.options.get("integer_only") and not isinstance(model, IntegerTransformer):
        model = IntegerTransformer.from_float(model)  # integer ranges of every operation
    if scheme.quantizes_output and not cfg.tie_word_embeddings:
        raise LowbitError(f"scheme {scheme.name} quantizes the tied embedding/output matrix; "
                          f"this model's embeddings are not tied")
    for name, module in list(model.named_modules()):
        block = block_of(name)
        if isinstance(module, nn.Linear):
            spec = scheme.linear_spec(block)
            if spec is not None:
                _set_module(model, name, QuantLinear(module, spec, name))
        elif isinstance(module, MatMul) and scheme.attention is not None and block is not None:
            _set_module(model, name, QuantMatMul(scheme.attention, name, probs=name.endswith(".av")))
    if scheme.quantizes_output:
        model.model.shared = QuantEmbedding(model.model.shared, model.lm_head)
    cfg.extra = dict(cfg.extra, qat={"scheme": scheme.name, **scheme.options})
    return model


def _switch_inputs(model, old: Scheme, new: Scheme):
    """``model``, quantized with ``old``, requantized for ``new`` where the two schemes differ in
    the input quantizers of their linear layers alone (e.g. ``bmt1`` -> ``bmt1a1``: the same
    1-bit weights, 1-bit instead of 8-bit inputs): a progressive recipe retrains the one model
    with its activations binarized. Any other pair of schemes is refused."""
    same = (old.bmt_norms == new.bmt_norms and old.attention == new.attention
            and old.options == new.options and old.linears.keys() == new.linears.keys()
            and all(dataclasses.replace(old.linears[b], act=new.linears[b].act,
                                        a_bits=new.linears[b].a_bits) == new.linears[b]
                    for b in old.linears))
    if not same or not quant_modules(model):
        raise LowbitError(f"the model is already quantized with scheme {old.name!r}, not "
                          f"{new.name!r} (only a change of the linear layers' input quantizers, "
                          f"e.g. bmt1 -> bmt1a1, can continue from it)")
    for name, module in quant_modules(model):
        if isinstance(module, QuantLinear):
            spec = new.linear_spec(block_of(name))
            if spec != module.spec:  # takes over weight and bias, then the buffers (planes)
                layer = QuantLinear(module, spec, name)
                layer.load_state_dict(module.state_dict())
                _set_module(model, name, layer)
    model.config.extra = dict(model.config.extra, qat={"scheme": new.name, **new.options})
    return model


def set_phase(model, scheme: Scheme, phase: int) -> None:
    """Switch fake quantization on for the groups of phases ``0..phase``, off for the rest."""
    on = set()
    for groups in scheme.phases[:phase + 1]:
        on.update(groups)
    for name, m in quant_modules(model):
        if isinstance(m, (QuantLinear, QuantMatMul)):
            m.enabled = group_of(name) in on


def needs_word_counts(scheme: Scheme) -> bool:
    """Whether the scheme codes the embedding with per-word planes (Chung et al.), which are
    assigned from the training text's token frequencies."""
    spec = scheme.linear_spec("output")
    return spec is not None and spec.weights == "rows"


def assign_word_planes(model, counts) -> torch.Tensor:
    """Chung et al.'s per-word planes for the tied output matrix from token ``counts`` [V]."""
    scheme = scheme_of(model)
    head = model.lm_head
    if not isinstance(head, QuantLinear) or not hasattr(head, "row_planes"):
        raise LowbitError("per-word bit widths need an lm_head with per-word planes (mixed, bmt*)")
    opts = model.config.extra["qat"]
    planes = word_cluster_planes(counts, opts.get("ratio", scheme.options["ratio"]),
                                 tuple(opts.get("word_planes", scheme.options["word_planes"])))
    head.row_planes.copy_(planes.to(head.row_planes.device))
    head._cache = None
    head._row_groups()  # found now, not in the first quantized training step
    return planes


def token_counts(tokenizer, sentences_src, sentences_tgt, vocab_size: int) -> torch.Tensor:
    """How often each id occurs in the (tokenized) training text, both sides (shared vocab)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for side, sents in (("source", sentences_src), ("target", sentences_tgt)):
        for s in sents:
            ids = torch.tensor(tokenizer.encode(s, side), dtype=torch.int64)
            counts += torch.bincount(ids, minlength=vocab_size)[:vocab_size].double()
    return counts


def log_weight_params(model):
    """The distinct weight parameters quantized with log codes (error feedback targets)."""
    seen, out = set(), []
    for _, m in quant_modules(model):
        if isinstance(m, QuantLinear) and m.spec.weights == "log" and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append((m, m.weight))
    return out


class QATHooks:
    """Callbacks for :func:`lowbit.sw.train.train` that run quantization-aware training.

    Parameters
    ----------
    scheme : scheme name.
    phase_steps : optimizer steps per QAT phase before the next phase starts (schemes with
        several phases: mixed, bmt*).
    counts : token counts [V] for the mixed scheme's per-word bit widths (None otherwise).
    log : progress messages.
    phase_minutes : advance phases by training minutes instead of steps (None: by steps).
    word_planes : plane counts of the embedding's frequency clusters, most frequent first
        (None: the scheme's, 4/3/2/1); see :func:`~lowbit.sw.quant.schemes.with_word_planes`.
    """

    def __init__(self, scheme: str, phase_steps: int = 1000, counts=None, log=print,
                 phase_minutes: float | None = None, word_planes=None):
        self.scheme = get_scheme(scheme)
        if word_planes is not None:
            self.scheme = with_word_planes(self.scheme, word_planes)
        if phase_steps < 1:
            raise LowbitError(f"--qat-phase-steps must be at least 1, not {phase_steps}")
        if phase_minutes is not None and not phase_minutes > 0:
            raise LowbitError(f"--qat-phase-minutes must be positive, not {phase_minutes}")
        self.phase_steps = phase_steps
        self.phase_minutes = phase_minutes
        self.counts = counts
        self.log = log
        self.phase = None
        self.errors: dict = {}
        self._t0 = None

    def transform(self, model):
        model = prepare_model(model, self.scheme)
        if needs_word_counts(self.scheme):
            if self.counts is None:
                raise LowbitError(f"the {self.scheme.name} scheme needs token counts for per-word "
                                  f"bit widths")
            planes = assign_word_planes(model, self.counts)
            bits = float(planes.double().mean())
            hist = {int(p): int((planes == p).sum()) for p in planes.unique()}
            self.log(f"qat: words per plane count {hist} "
                     f"(average {bits:.2f} bits per embedding weight)")
        self._enter_phase(model, 0, 0)
        return model

    def _enter_phase(self, model, phase: int, step: int) -> None:
        phase = min(phase, len(self.scheme.phases) - 1)
        if phase != self.phase:
            set_phase(model, self.scheme, phase)
            self.phase = phase
            groups = sorted(set().union(*self.scheme.phases[:phase + 1]))
            self.log(f"qat {self.scheme.name}: phase {phase + 1}/{len(self.scheme.phases)} from step "
                     f"{step}, quantized: {', '.join(groups) or 'nothing (float warm-up)'}")

    def after_step(self, model, step: int) -> None:
        """Advance the phase (every ``phase_steps`` steps, or ``phase_minutes`` of training time
        when given), then apply error feedback (log schemes)."""
        import time

        if self.phase_minutes is not None:
            self._t0 = self._t0 or time.time()
            phase = int((time.time() - self._t0) / 60 / self.phase_minutes)
        else:
            phase = step // self.phase_steps
        self._enter_phase(model, phase, step)
        if self.scheme.error_feedback:
            self.error_feedback(model)

    def error_feedback(self, model) -> None:
        """Aji & Heafield: ``v = w + e``; ``w <- Q(v)``; ``e <- v - Q(v)`` for every log weight
        (:meth:`QuantLinear.feed_back`; a tied matrix once)."""
        for m, p in log_weight_params(model):
            if m.enabled:
                self.errors[id(p)] = m.feed_back(self.errors.get(id(p)))


@torch.no_grad()
def calibrate(model, batches, device=None) -> None:
    """Set per-tensor activation ranges by running teacher-forced ``batches`` of
    ``(src, tgt_in)`` through the fake-quant model in eval mode (no dropout)."""
    acts = [m for m in model.modules() if isinstance(m, ActQuant)]
    was_training = model.training
    model.eval()
    for a in acts:
        a.calibrating = True
    try:
        for src, tgt_in in batches:
            model(src.to(device), tgt_in.to(device))
    finally:
        for a in acts:
            a.calibrating = False
        model.train(was_training)


def to_integer(model):
    """Switch every quantized module to integer mode (weights quantized now) and the host
    computation to float64 (see docs/quantization.md, "CPU and GPU give the same tokens")."""
    for name, m in quant_modules(model):
        if isinstance(m, QuantLinear):
            m.enabled = True
            m.set_integer(m.quantized_weight())
        elif isinstance(m, QuantMatMul):
            m.set_integer()
    for _, m in quant_modules(model):
        if isinstance(m, QuantEmbedding):
            m.set_integer()
    model.eval()
    model = model.double()
    if isinstance(model, IntegerTransformer):
        model.set_integer_only()
    return model


def matmul_inventory(model) -> list[dict]:
    """Every matmul of the model: ``{"name", "block", "unit", "params"}`` (unit ``float`` for
    matmuls left in float). Wu et al.'s count is the number of entries with an integer unit."""
    from lowbit.sw.model import MatMul

    out = []
    for name, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantMatMul)):
            out.append({"name": name, "block": block_of(name), "unit": m.site.unit,
                        "params": dict(m.site.params)})
        elif isinstance(m, (nn.Linear, MatMul)):
            out.append({"name": name, "block": block_of(name), "unit": "float", "params": {}})
    return out
