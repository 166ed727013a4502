"""Compile the integer-only model into sequencer programs, and decode on the Verilated
sequencer with the host sending nothing but token ids.

:class:`ModelCompiler` walks an integer-only model (:mod:`lowbit.sw.quant.integer`, in integer
mode) and emits, into one :class:`~lowbit.hw.seq_program.Program` (one scratchpad layout):

* the model's constants, once: every matmul's int8 weights and int32 bias, every requantize
  multiplier and shift, the LayerNorm gains and offsets, the embedding table (also the output
  layer's weights: the embeddings are tied) with its per-row scales and both position tables;
* :meth:`~ModelCompiler.encoder`: one encoder pass over a sentence of ``src_len`` tokens (its
  ids are the only input: an INDEX command loads each into an index register and the
  embedding unit reads the table row it selects), then the cross-attention keys and values of
  every decoder layer;
* :meth:`~ModelCompiler.decoder_step`: one decoder step for any step: INDEX commands load the
  token id (written by the host) and the step (a counter the step advances itself); the
  embedding row, the position row and the key/value cache rows are addressed through them;
  self-attention runs over the ``max_tgt`` cache rows with the rows not yet written masked out
  of the softmax (their probabilities are 0, so P.V and every later integer are the golden
  model's); then cross-attention, FFN, output scores and argmax, whose token id the host reads.

The constants are the model's own (``model._const``, the tensors ``kernels.call_op`` receives)
and every operation's operands are laid out by :class:`lowbit.sim.cosim_ops.RtlOps`, the
co-simulation's mapping of the golden operations onto the vector units; each command's
expected result is the golden operation's (:meth:`Program.vector`). Nothing here computes.

:func:`sequencer_greedy` runs a whole sentence: the encoder program, then the decoder step
program once per token, as :func:`lowbit.sw.decode.greedy_search` decodes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lowbit import LowbitError
from lowbit.hw.seq_program import At, Program, ScratchpadFull
from lowbit.hw.sequencer import OPCODES
from lowbit.sw.decode import DecodeOptions, max_lengths
from lowbit.sw.quant.integer import ACT_BITS, PROB_BITS, SUM_BITS

from .cosim_ops import RtlOps

__all__ = ["ModelCompiler", "SeqDecode", "SeqBatchDecode", "sequencer_greedy",
           "sequencer_greedy_batch", "step_commands", "sequencer_for", "DEPTH", "PROGRAM_DEPTH"]

DEPTH = 1 << 24         # scratchpad words: the shipped model (7.6 M weights, 8.2 M words in all)
#                         and a sentence of up to 256 tokens (activations, key/value caches)
REQUANT_UNITS = {8: "requant", 16: "requant16", 32: "requant32"}


def _log2(n: int, what: str) -> int:
    if n < 1 or n & (n - 1):
        raise ValueError(f"{what} must be a power of two (an index register is shifted), "
                         f"not {n}")
    return n.bit_length() - 1


class ModelCompiler:
    """Programs of an integer-only ``model`` for sentences of ``src_len`` tokens and outputs
    of at most ``max_tgt`` tokens (parameters of the scratchpad: ``depth``, ``max_len``).

    Attributes: ``program`` (the :class:`Program`: regions, golden values, commands),
    ``regions`` of the host's interface: ``src_ids``, ``token``, ``step``, ``next``.
    """

    def __init__(self, model, *, src_len, max_tgt: int, depth: int = DEPTH,
                 max_len: int = 1024):
        cfg = model.config
        if not getattr(model, "integer_only", False):
            raise ValueError("the sequencer runs an integer-only model in integer mode")
        self.model, self.cfg = model, cfg
        self.d, self.heads = cfg.d_model, cfg.attention_heads
        self.dh = self.d // self.heads
        self.d_shift = _log2(self.d, "d_model")
        self.src_lens = [int(src_len)] if np.ndim(src_len) == 0 else [int(n) for n in src_len]
        if not self.src_lens or min(self.src_lens) < 1:
            raise ValueError(f"source lengths must be positive, not {self.src_lens}")
        self.batch = len(self.src_lens)
        self.src_len = self.src_lens[0]
        # Key/value cache rows: one block of ``batch_pow2`` rows (one per sentence) per step,
        # so that the step register, shifted, addresses a step's block.
        self.batch_pow2 = 1 << (self.batch - 1).bit_length()
        self.cache_len = 1 << max(max_tgt - 1, 1).bit_length()
        self.program = Program(depth=depth, max_len=max_len, score_len=cfg.vocab_size)
        self.adapt = RtlOps(cfg)
        self.regions: dict = {}
        self._memory: dict = {}         # sentence -> cross-attention (K, V) per decoder layer
        self._sentence = None           # the sentence whose commands are being emitted

    def _s(self, name: str, b: int) -> str:
        """Region name ``name`` of sentence ``b`` (unchanged in a batch of one)."""
        return name if self.batch == 1 else f"s{b}.{name}"

    def _tagged(self, b: int, emit):
        """Run ``emit()`` and mark the commands it adds as sentence ``b``'s (a finished
        sentence's commands are left out of the decoder step, see :func:`step_commands`)."""
        start = len(self.program.commands)
        out = emit()
        for c in self.program.commands[start:]:
            c["sentence"] = b
        return out

    # -- constants ------------------------------------------------------------------------------
    def _c(self, key: str) -> dict:
        return self.model._const(key, None)

    def _put(self, name: str, value):
        p = self.program
        if name in p.regions:
            return p.regions[name]
        return p.put(name, torch.as_tensor(value).to(torch.int64).cpu().numpy())

    def _table(self):
        """The embedding table, shared by both embeddings and the output layer (tied)."""
        table = self._c("encoder.embedding")["table"]
        for key, field_ in (("decoder.embedding", "table"), ("lm_head.scores", "codes")):
            if not torch.equal(self._c(key)[field_], table):
                raise ValueError(f"{key} does not use the shared embedding table")
        return self._put("embed.table", table)

    # -- operations -----------------------------------------------------------------------------
    def _vector(self, unit: str, name: str, params: dict, ops: dict, acts: dict, out=None):
        """One vector command: ``ops`` (RtlOps' operands of the golden call) give the
        constant fields (the same row for every row) and cfg scalars; ``acts`` the fields that
        are activations in the scratchpad."""
        p = self.program
        d = p.descriptions[unit]
        bad = {k: v for k, v in params.items()
               if k not in ("max_len", "per_channel") and d.params[k] != v}
        if bad:
            raise ValueError(f"{name}: the sequencer's {unit} unit has other parameters "
                             f"than {bad}")
        fields = {}
        for n, v in d.x_fields(ops).items():
            if n in acts:
                fields[n] = acts[n]
                continue
            v = np.asarray(v)
            if not (v == v[:1]).all():
                raise ValueError(f"{name}: field {n} differs from row to row")
            fields[n] = self._put(f"{name}.{n}", v[0])
        cfg = {}
        for n, v in d.cfg_fields(ops).items():
            v = np.asarray(v)
            if not (v == v[0]).all():
                raise ValueError(f"{name}: cfg {n} differs from row to row")
            cfg[n] = int(v[0])
        return p.vector(unit, name, fields, cfg, out=out)

    def _requant(self, name, acc, mult, shift, *, out_bits=ACT_BITS, relu=False, out=None):
        _, params, ops, _ = self.adapt._requantize(torch.zeros(acc.shape, dtype=torch.int64),
                                                   mult, shift, out_bits=out_bits, relu=relu)
        if not params["per_channel"]:   # one scale for the tensor: the same for every channel
            ops = {**ops, **{k: np.repeat(ops[k][:, None], acc.shape[1], 1)
                             for k in ("mult", "shift")}}
        return self._vector(REQUANT_UNITS[out_bits], name, params, ops, {"data": acc}, out)

    def _weights(self, key: str):
        c = self._c(key)
        return c, self._put(f"{key}.w", c["codes"]), self._put(f"{key}.bias", c["bias"])

    def linear(self, name, m, x, *, relu=False, out=None):
        """``requantize(x @ W.T + bias)`` of the model's matmul ``m`` (its ``.linear``)."""
        c, w, b = self._weights(f"{m.site.name}.linear")
        acc = self.program.matmul(f"{name}.acc", x, w, b)
        return self._requant(name, acc, c["mult"], c["shift"], relu=relu, out=out)

    def attention(self, name, attn, q, k, v, keys: int):
        """Multi-head attention of ``q`` [Lq, D] over the ``keys`` rows of ``k`` and ``v``
        ([keys, D] regions), heads through views."""
        ctx = self.program.buffer(f"{name}.ctx.acc", (q.shape[0], self.d))
        self._attend(name, attn, q.view(0, q.shape, self.d), k, v, keys,
                     ctx.view(0, ctx.shape, self.d))
        c = self._c(f"{attn.av.site.name}.attend")
        return self._requant(f"{name}.ctx", ctx, c["mult"], c["shift"])

    def _attend(self, name, attn, q, k, v, keys: int, ctx):
        """The accumulators of multi-head attention of ``q`` (a view [Lq, D]) over the
        ``keys`` rows of ``k`` and ``v`` ([keys, D] regions) into the view ``ctx`` [Lq, D]."""
        p, H, dh, D = self.program, self.heads, self.dh, self.d
        lq = q.shape[0]
        scores = p.buffer(f"{name}.scores", (H * lq, keys))
        zero_k, zero_dh = self._put(f"zero.{keys}", np.zeros(keys)), \
            self._put(f"zero.{dh}", np.zeros(dh))
        for h in range(H):
            p.matmul(f"{name}.qk{h}", q.region.view(q.offset + h * dh, (lq, dh), q.row_stride),
                     k.view(h * dh, (keys, dh), D), zero_k,
                     out=scores.view(h * lq * keys, (lq, keys), keys))
        c = self._c(f"{attn.qk.site.name}.softmax")
        z = self._requant(f"{name}.z", scores, c["mult"], c["shift"], out_bits=16)
        _, params, ops, _ = self.adapt._softmax(torch.zeros(z.shape, dtype=torch.int64),
                                                out_bits=PROB_BITS)
        probs = self._vector("softmax", f"{name}.probs", params, ops, {"data": z})
        for h in range(H):
            p.matmul(f"{name}.av{h}", probs.view(h * lq * keys, (lq, keys), keys),
                     v.view(h * dh, (dh, keys), 1, D), zero_dh,
                     out=ctx.region.view(ctx.offset + h * dh, (lq, dh), ctx.row_stride))

    def residual_norm(self, name, x, m, h):
        """``layernorm(residual_add(x, h @ W.T + bias))`` of matmul ``m`` (its ``.residual``
        and ``.layernorm``)."""
        key = m.site.name
        c, w, b = self._weights(f"{key}.residual")
        acc = self.program.matmul(f"{name}.acc", h, w, b)
        zeros = torch.zeros(x.shape, dtype=torch.int64)
        _, params, ops, _ = self.adapt._residual_add(zeros, c["mult_x"], c["shift_x"], zeros,
                                                     c["mult"], c["shift"], out_bits=SUM_BITS)
        t = self._vector("residual", f"{name}.sum", params, ops, {"data": x, "b": acc})
        n = self._c(f"{key}.layernorm")
        _, params, ops, _ = self.adapt._layernorm(zeros, n["g"], n["b"], n["shift"], n["eps"],
                                                  in_bits=SUM_BITS, out_bits=ACT_BITS)
        return self._vector("layernorm", f"{name}.norm", params, ops, {"data": t})

    def embed(self, name, stack: str, pos: At, out=None):
        """The embedding of the token in index register 1 at position row ``pos``."""
        c = self._c(f"{stack}.embedding")
        table = self._table()
        mult, shift = self._put(f"{stack}.embedding.mult", c["mult"]), \
            self._put(f"{stack}.embedding.shift", c["shift"])
        x = {"data": At(table, (1, self.d), reg=1, shift=self.d_shift), "pos": pos,
             "mult": At(mult, (1,), reg=1, hold=True), "shift": At(shift, (1,), reg=1, hold=True)}
        return self.program.vector("embedding", name, x, {"id": 0, "position": 0}, out=out)

    # -- programs -------------------------------------------------------------------------------
    def encoder(self, src_ids, sentence: int = 0) -> "object":
        """One encoder pass over ``src_ids`` (the host's input, sentence ``sentence`` of the
        batch; the compiled golden values follow them), then every decoder layer's
        cross-attention K and V. Returns the encoder output's region ([src_len, D])."""
        p, D, b = self.program, self.d, sentence
        S = self.src_lens[b]
        ids = np.asarray(src_ids, np.int64).reshape(-1)
        if len(ids) != S or (ids == self.cfg.pad_token_id).any():
            raise ValueError(f"the encoder takes {S} token ids without padding, not {ids}")
        n = lambda name: self._s(name, b)   # noqa: E731
        src = self.regions[n("src_ids")] = p.put(n("src.ids"), ids)
        pos = self._put("encoder.embedding.pos", self._c("encoder.embedding")["pos"])
        x = p.buffer(n("enc.embed"), (S, D))
        for i in range(S):
            p.load_index(1, At(src, (1,), offset=i))
            self.embed(n(f"enc.embed.{i}"), "encoder", At(pos, (1, D), offset=i * D),
                       out=At(x, (1, D), offset=i * D))
        for i, layer in enumerate(self.model.model.encoder.layers):
            a = layer.self_attn
            q, k, v = (self.linear(n(f"enc{i}.{r}"), getattr(a, f"{r}_proj"), x) for r in "qkv")
            ctx = self.attention(n(f"enc{i}.self"), a, q, k, v, S)
            x = self.residual_norm(n(f"enc{i}.self.out"), x, a.out_proj, ctx)
            h = self.linear(n(f"enc{i}.fc1"), layer.fc1, x, relu=True)
            x = self.residual_norm(n(f"enc{i}.ffn.out"), x, layer.fc2, h)
        self.regions[n("memory")] = x
        self._memory[b] = [tuple(self.linear(n(f"dec{i}.cross.{r}"), getattr(a, f"{r}_proj"), x)
                                 for r in "kv")
                           for i, a in enumerate(layer.encoder_attn
                                                 for layer in self.model.model.decoder.layers)]
        return x

    def decoder_step(self):
        """One decoder step of every sentence of the batch (after :meth:`encoder` of each):
        reads the token id words (one per sentence) and the step word (which it advances),
        writes the next token ids. The linear layers run once for the batch (a matmul of one
        row per sentence), attention per sentence over its own key/value cache and its own
        encoder output. Returns the next token ids' region."""
        p, D, T, B = self.program, self.d, self.cache_len, self.batch
        H, dh, Bp = self.heads, self.dh, self.batch_pow2
        token = self.regions["token"] = p.put("dec.token",
                                              [self.cfg.decoder_start_token_id] * B)
        step = self.regions["step"] = p.put("dec.step", [0])
        keep = self._put("dec.keep", np.tril(np.ones((T, T))))
        pos = self._put("decoder.embedding.pos", self._c("decoder.embedding")["pos"])
        # Cache row (t, b) of a layer at word ((t * Bp) + b) * D: step t's rows of the batch
        # are one block that the step register addresses and one matmul writes.
        caches = [(p.buffer(f"dec{i}.k.cache", (T * Bp, D)),
                   p.buffer(f"dec{i}.v.cache", (T * Bp, D)))
                  for i in range(len(self.model.model.decoder.layers))]
        p.load_index(2, step, inc=1)
        y = p.buffer("dec.embed", (B, D))
        for b in range(B):
            def emb(b=b):
                p.load_index(1, At(token, (1,), offset=b))
                self.embed(self._s("dec.embed", b), "decoder",
                           At(pos, (1, D), reg=2, shift=self.d_shift),
                           out=At(y, (1, D), offset=b * D))
            self._tagged(b, emb)
        block = {"reg": 2, "shift": _log2(Bp * D, "cache block")}
        keep_row = At(keep, (T,), reg=2, shift=_log2(T, "cache rows"))
        zero_t, zero_dh = self._put(f"zero.{T}", np.zeros(T)), self._put(f"zero.{dh}",
                                                                         np.zeros(dh))
        for i, layer in enumerate(self.model.model.decoder.layers):
            a, (kc, vc) = layer.self_attn, caches[i]
            q = self.linear(f"dec{i}.self.q", a.q_proj, y)
            self.linear(f"dec{i}.self.k", a.k_proj, y, out=At(kc, (B, D), **block))
            self.linear(f"dec{i}.self.v", a.v_proj, y, out=At(vc, (B, D), **block))
            # Self-attention: every sentence's scores in one buffer (rows b * H + h), one
            # requantize and one softmax for all of them.
            name = f"dec{i}.self"
            scores = p.buffer(f"{name}.scores", (B * H, T))
            ctx = p.buffer(f"{name}.ctx.acc", (B, D))
            for b in range(B):
                self._tagged(b, lambda b=b: [p.matmul(
                    f"{name}.qk{h}", q.view(b * D + h * dh, (1, dh), D),
                    kc.view(b * D + h * dh, (T, dh), Bp * D), zero_t,
                    out=scores.view((b * H + h) * T, (1, T), T)) for h in range(H)])
            c = self._c(f"{a.qk.site.name}.softmax")
            z = self._requant(f"{name}.z", scores, c["mult"], c["shift"], out_bits=16)
            _, params, ops, _ = self.adapt._softmax(torch.zeros(z.shape, dtype=torch.int64),
                                                    out_bits=PROB_BITS)
            probs = self._vector("softmax", f"{name}.probs", params, ops,
                                 {"data": z, "keep": keep_row})
            for b in range(B):
                self._tagged(b, lambda b=b: [p.matmul(
                    f"{name}.av{h}", probs.view((b * H + h) * T, (1, T), T),
                    vc.view(b * D + h * dh, (dh, T), 1, Bp * D), zero_dh,
                    out=ctx.view(b * D + h * dh, (1, dh), D)) for h in range(H)])
            c = self._c(f"{a.av.site.name}.attend")
            ctx = self._requant(f"{name}.ctx", ctx, c["mult"], c["shift"])
            y = self.residual_norm(f"dec{i}.self.out", y, a.out_proj, ctx)
            # Cross-attention: each sentence over its own encoder output (its own length).
            a = layer.encoder_attn
            q = self.linear(f"dec{i}.cross.q", a.q_proj, y)
            name = f"dec{i}.cross"
            ctx = p.buffer(f"{name}.ctx.acc", (B, D))
            for b in range(B):
                self._tagged(b, lambda b=b: self._attend(
                    self._s(name, b), a, q.view(b * D, (1, D), D), *self._memory[b][i],
                    self.src_lens[b], ctx.view(b * D, (1, D), D)))
            c = self._c(f"{a.av.site.name}.attend")
            ctx = self._requant(f"{name}.ctx", ctx, c["mult"], c["shift"])
            y = self.residual_norm(f"dec{i}.cross.out", y, a.out_proj, ctx)
            h = self.linear(f"dec{i}.fc1", layer.fc1, y, relu=True)
            y = self.residual_norm(f"dec{i}.ffn.out", y, layer.fc2, h)
        c = self._c("lm_head.scores")
        acc = p.matmul("dec.logits.acc", y, self._table(), self._put("lm_head.bias", c["bias"]))
        z = self._requant("dec.scores", acc, c["mult"], c["shift"], out_bits=32)
        _, params, ops, _ = self.adapt._argmax(torch.zeros(z.shape, dtype=torch.int64))
        nxt = self.regions["next"] = self._vector("argmax", "dec.next", params, ops,
                                                   {"data": z})
        return nxt


def step_commands(step: list, live) -> list:
    """The decoder step program of a batch whose sentences ``live`` are still decoding: a
    finished sentence's own commands (its embedding, its attention) are left out; its rows
    of the batched commands are computed and not read."""
    live = set(live)
    return [c for c in step if c.get("sentence", -1) < 0 or c["sentence"] in live]


@dataclass
class SeqDecode:
    """A sentence decoded on the Verilated sequencer: ``tokens`` (without EOS), the encoder
    output read back, cycles of the encoder pass and of each decoder step, commands per
    program, ``ops`` (command kind -> [commands run, cycles]; ``halt``: the HALT fetch that
    ends each program run), the matmuls' MACs, the wall-clock seconds of the simulation and
    ``mismatch`` (with ``check``: where the scratchpad first differed from the compiled golden
    chain, else None)."""
    tokens: list
    memory: np.ndarray
    encoder_cycles: int
    step_cycles: list = field(default_factory=list)
    commands: dict = field(default_factory=dict)
    seconds: float = 0.0
    build_seconds: float = 0.0
    ops: dict = field(default_factory=dict)
    macs: int = 0
    mismatch: dict | None = None


@dataclass
class SeqBatchDecode(SeqDecode):
    """A batch decoded on the Verilated sequencer: as :class:`SeqDecode`, with ``tokens``,
    ``memory`` and ``encoder_cycles`` one per sentence and ``step_cycles`` one per run of
    the batch's decoder step program."""


#: Program words of a sequencer that decodes any sentence: the encoder pass of the longest
#: source (2 commands per token and 90 more) and a decoder step (129 commands).
PROGRAM_DEPTH = 1024
OP_NAMES = {v: k for k, v in OPCODES.items()}


def sequencer_for(program: Program, **kwargs):
    """A Verilated sequencer sized for ``program``'s scratchpad layout and every sentence's
    programs (``kwargs``: :class:`~lowbit.sim.seq_harness.VerilatedSequencer`'s ``fault``,
    ``mm_rows``, ``mm_cols``)."""
    from .seq_harness import VerilatedSequencer

    return VerilatedSequencer(depth=program.depth, program_depth=PROGRAM_DEPTH,
                              max_len=program.max_len, score_len=program.score_len, **kwargs)


def _tally(run: SeqDecode, commands: list, per_command: list) -> None:
    for c, n in zip(commands, per_command):
        have = run.ops.setdefault(OP_NAMES[c["op"]], [0, 0])
        have[0] += 1
        have[1] += n
        if c["op"] == OPCODES["matmul"]:
            run.macs += c["rows"] * c["length"] * c["k"]
    halt = run.ops.setdefault("halt", [0, 0])
    halt[0] += 1
    halt[1] += 1


def _first_difference(seq, program: Program, names, commands: list, what: str):
    """The first region (by address) of ``names`` whose words differ from the compiled golden
    chain, as a :class:`lowbit.sim.cosim_kernels.CosimMismatch` info; None if all equal."""
    for name in sorted(names, key=lambda n: program.regions[n].addr):
        r = program.regions[name]
        got, want = seq.read(r), program.golden[name]
        if np.array_equal(got, want):
            continue
        bad = tuple(int(b) for b in np.argwhere(got != want)[0])
        cmd = next((i for i, c in enumerate(commands)
                    if r.addr <= c.get("dst", -1) < r.addr + r.size), None)
        layer, _, role = name.partition(".")
        return {"what": f"{what} command", "call": cmd,
                "kernel": OP_NAMES[commands[cmd]["op"]] if cmd is not None else "host write",
                "site": name, "layer": layer, "role": role or name,
                "shapes": [list(r.shape)], "result_shape": list(r.shape), "index": list(bad),
                "rtl": int(got[bad]), "golden": int(want[bad]),
                "differing": int((got != want).sum()), "elements": r.size}
    return None


def sequencer_greedy(model, src_ids, opts: DecodeOptions | None = None, *, seq=None,
                     check: bool = False) -> SeqDecode:
    """Greedy decoding of one sentence (ids without padding, EOS included as the model's
    encoder takes it) on the Verilated sequencer: :func:`sequencer_greedy_batch` of a batch
    of one, its per-sentence lists unpacked."""
    run = sequencer_greedy_batch(model, [src_ids], opts, seq=seq, check=check)
    return SeqDecode(run.tokens[0], run.memory[0], run.encoder_cycles[0], run.step_cycles,
                     run.commands, run.seconds, run.build_seconds, run.ops, run.macs,
                     run.mismatch)


def sequencer_greedy_batch(model, batch: list, opts: DecodeOptions | None = None, *,
                           seq=None, check: bool = False) -> SeqBatchDecode:
    """Greedy decoding of a batch of sentences (each a list of ids without padding, EOS
    included as the model's encoder takes it) on the Verilated sequencer.

    The host writes the weights and every sentence's ids and runs each sentence's encoder
    program; then, each step, it writes the batch's token ids, starts the decoder step
    program (the linear layers as matmuls of one row per sentence, attention per sentence)
    and reads the next token ids. A sentence stops as :func:`lowbit.sw.decode.greedy_search`
    stops it (EOS or padding, or its own length limit) and then retires: the step program
    leaves its own commands out (:func:`step_commands`); the batch ends when every sentence
    has.

    ``seq``: a sequencer of :func:`sequencer_for` to reuse (its scratchpad is cleared first;
    default: one built for this batch). ``check``: after each encoder pass and after the
    first decoder step (the compiled step's own tokens and position) every scratchpad region
    is compared with the compiled golden chain; the first difference stops the decode and is
    returned as ``mismatch``."""
    opts = opts or DecodeOptions()
    cfg = model.config
    srcs = [torch.as_tensor(ids, dtype=torch.int64).reshape(1, -1) for ids in batch]
    limits = [max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)[0]
              for src in srcs]
    comp = ModelCompiler(model, src_len=[src.shape[1] for src in srcs], max_tgt=max(limits))
    p, B = comp.program, len(srcs)
    encoders, encoder_regions = [], []
    try:
        for b, src in enumerate(srcs):
            before = set(p.regions)
            comp.encoder(src[0].numpy(), sentence=b)
            encoders.append(p.take_commands())
            encoder_regions.append([n for n in p.regions if n not in before])
        comp.decoder_step()
    except ScratchpadFull as e:
        raise LowbitError(f"a batch of {B} sentence(s) of up to {max(comp.src_lens)} source "
                          f"tokens does not fit the sequencer's scratchpad ({e}): use a "
                          f"smaller --batch-size") from None
    step = p.take_commands()
    t0 = time.perf_counter()
    own = seq is None
    if own:
        seq = sequencer_for(p)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq.memory[:] = 0
    run = SeqBatchDecode([[] for _ in srcs], [], [],
                         commands={"encoder": sum(map(len, encoders)), "decoder_step": len(step)},
                         build_seconds=build)
    for b, encoder in enumerate(encoders):
        seq.load(p, encoder, inputs=b == 0)
        cycles, per_command = seq.start()
        run.encoder_cycles.append(cycles)
        run.memory.append(seq.read(comp.regions[comp._s("memory", b)]))
        _tally(run, encoder, per_command)
        if check and run.mismatch is None:
            what = "encoder pass" if B == 1 else f"encoder pass of sentence {b}"
            run.mismatch = _first_difference(seq, p, encoder_regions[b], encoder, what)
    token_addr, next_addr = comp.regions["token"].addr, comp.regions["next"].addr
    tokens = [cfg.decoder_start_token_id] * B
    live = list(range(B)) if run.mismatch is None else []
    commands = None
    for i in range(max(limits)):
        if not live:
            break
        if commands is None:
            commands = step_commands(step, live)
            seq.load(p, commands, inputs=False)
        seq.memory[token_addr:token_addr + B] = tokens
        n, per_command = seq.start()
        run.step_cycles.append(n)
        _tally(run, commands, per_command)
        if check and i == 0:
            run.mismatch = _first_difference(seq, p, p.regions, commands, "decoder step")
            if run.mismatch is not None:
                break
        nxt = seq.memory[next_addr:next_addr + B]
        for b in list(live):
            tokens[b] = int(nxt[b])
            if tokens[b] in (cfg.eos_token_id, cfg.pad_token_id) or i + 1 == limits[b]:
                live.remove(b)
                commands = None     # the step program without the retired sentence's
            if tokens[b] not in (cfg.eos_token_id, cfg.pad_token_id):
                run.tokens[b].append(tokens[b])
    run.seconds = time.perf_counter() - t0
    if own:
        seq.close()
    return run
