"""A Transformer encoder-decoder for translation, readable in one sitting.

The parameter names are those of Hugging Face's MarianMT (``model.shared``,
``model.encoder.layers.N.self_attn.q_proj``, ``fc1``, ``final_layer_norm``, ``lm_head``,
``final_logits_bias`` ...), so importing and exporting Marian checkpoints is a rename-free copy
(see :mod:`lowbit.sw.hf`). The maths follows Marian too: sinusoidal positions laid out as
[sin-half | cos-half], token embeddings scaled by sqrt(d_model), post-norm residual blocks.

Two rules make the model easy to quantize without editing this file:

* every weight matmul is an :class:`torch.nn.Linear` (the vocabulary projection ``lm_head``
  included, even when its weight is tied to the embedding), and
* every activation-by-activation matmul (Q.K^T and attention.V) goes through a :class:`MatMul`
  module, one instance per attention for each of the two products.

A quantizer swaps those modules for its own (e.g. ones that call integer golden kernels) and
training, decoding and evaluation pick them up, because they only ever call modules.

Shapes in comments: B batch, S source length, T target length, D d_model, H heads,
Dh = D / H head size, F ffn_dim, V vocabulary size.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit import LowbitError

ACTIVATIONS = {"relu": F.relu, "swish": F.silu, "silu": F.silu, "gelu": F.gelu}


# Field annotation (a string: postponed annotations) -> the types a value may have.
_FIELD_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
                "dict": (dict,)}


@dataclass
class TransformerConfig:
    vocab_size: int = 8000          # joint source/target SentencePiece vocabulary
    d_model: int = 256              # width of every residual stream
    encoder_layers: int = 3
    decoder_layers: int = 3
    attention_heads: int = 4        # d_model must be divisible by it
    ffn_dim: int = 1024             # hidden width of the position-wise feed-forward block
    activation: str = "relu"        # relu | swish (Marian's) | gelu
    dropout: float = 0.3            # on embeddings, sub-layer outputs
    attention_dropout: float = 0.1  # on attention probabilities
    activation_dropout: float = 0.0  # after the FFN activation
    normalize_before: bool = False  # False: post-norm (Marian, the paper); True: pre-norm
    tie_word_embeddings: bool = True  # lm_head.weight is model.shared.weight
    scale_embedding: bool = True    # multiply token embeddings by sqrt(d_model), as Marian does
    max_position_embeddings: int = 512  # longest sequence (tokens, EOS included)
    pad_token_id: int = 0
    eos_token_id: int = 2
    unk_token_id: int = 1
    decoder_start_token_id: int = 0  # Marian starts decoding from the pad token
    bmt_norms: bool = False         # BMT (Zhang et al. 2023) extra LayerNorms, see MultiHeadAttention/FFN
    extra: dict = field(default_factory=dict)  # free-form metadata carried along (not used by the model)

    def __post_init__(self):
        # Types first: a config read from a file may hold anything JSON can (the checks below
        # compare and hash the values).
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), _FIELD_TYPES[f.type]
            if not isinstance(value, kind) or (isinstance(value, bool) and bool not in kind):
                what = {"int": "an integer", "float": "a number", "bool": "a boolean",
                        "str": "a string", "dict": "an object"}[f.type]
                raise LowbitError(f"config: {f.name} must be {what}, not {value!r}")
        for name in ("vocab_size", "d_model", "encoder_layers", "decoder_layers", "attention_heads",
                     "ffn_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if value < 1:
                raise LowbitError(f"config: {name} must be a positive integer, not {value!r}")
        if self.d_model % self.attention_heads:
            raise LowbitError(f"config: d_model {self.d_model} is not divisible by attention_heads "
                              f"{self.attention_heads}")
        if self.activation not in ACTIVATIONS:
            raise LowbitError(f"config: activation must be one of {sorted(ACTIVATIONS)}, not "
                              f"{self.activation!r}")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise LowbitError(f"config: {name} must be in [0, 1), not {value!r}")
        for name in ("pad_token_id", "eos_token_id", "unk_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise LowbitError(f"config: {name} {value} is outside the vocabulary 0..{self.vocab_size - 1}")

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        if not isinstance(d, dict):
            raise LowbitError(f"config: must be an object, not {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LowbitError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


class MatMul(nn.Module):
    """``a @ b`` as a module, so a quantizer can replace activation-by-activation products."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """Marian's position table: row p = [sin(p / 10000^(2i/dim)) for i] ++ [cos(...) for i].

    Not interleaved (unlike the original Transformer): the sines fill the first half.
    """
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]               # (P, 1)
    j = torch.arange(dim, dtype=torch.float64)                             # (dim,)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)  # (P, dim)
    half = (dim + 1) // 2
    out = torch.empty(n_pos, dim, dtype=torch.float64)
    out[:, :half] = torch.sin(angle[:, 0::2])
    out[:, half:] = torch.cos(angle[:, 1::2])
    return out.float()


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads (self- or cross-attention).

    With ``bmt_norms`` (BMT, Zhang et al. 2023) a LayerNorm follows each of the Q, K and V
    projections and the output is ``LN(W_o ctx) + ctx``: the extra norms keep the variance of
    binarized products in check.
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        d = cfg.d_model
        self.heads = cfg.attention_heads
        self.head_dim = d // cfg.attention_heads
        self.scaling = self.head_dim ** -0.5
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)
        self.qk = MatMul()  # Q.K^T
        self.av = MatMul()  # attention probabilities . V
        self.dropout = cfg.attention_dropout
        self.bmt_norms = cfg.bmt_norms
        if cfg.bmt_norms:
            self.q_norm = nn.LayerNorm(d)
            self.k_norm = nn.LayerNorm(d)
            self.v_norm = nn.LayerNorm(d)
            self.out_norm = nn.LayerNorm(d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, Dh)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``kv`` (B, L, D) as (B, H, L, Dh) each."""
        k, v = self.k_proj(kv), self.v_proj(kv)
        if self.bmt_norms:
            k, v = self.k_norm(k), self.v_norm(v)
        return self._split(k), self._split(v)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: dict | None = None, static_kv: bool = False) -> torch.Tensor:
        """Attend from ``x`` (B, Tq, D) to ``kv`` (B, Tk, D) (``x`` itself when None).

        ``mask`` is boolean, True where attention is forbidden, broadcastable to (B, H, Tq, Tk).
        ``cache`` (a dict owned by the caller) makes decoding incremental: for self-attention the
        new keys/values are appended to ``cache["k"]``/``cache["v"]``; with ``static_kv`` (cross-
        attention) they are computed from ``kv`` on the first call and reused afterwards.
        """
        q = self.q_proj(x)                                   # (B, Tq, D)
        if self.bmt_norms:
            q = self.q_norm(q)
        q = self._split(q)                                   # (B, H, Tq, Dh)
        if static_kv and cache is not None and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            k, v = self.project_kv(x if kv is None else kv)  # (B, H, Tk, Dh)
            if cache is not None:
                if not static_kv and "k" in cache:
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v
        scores = self.qk(q, k.transpose(-1, -2)) * self.scaling   # (B, H, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        # at least float32 (bf16 under autocast), float64 kept (integer-mode models decode in
        # float64 so CPU and GPU round activations identically)
        probs = F.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(q.dtype)
        probs = F.dropout(probs, p=self.dropout, training=self.training)
        ctx = self.av(probs, v)                              # (B, H, Tq, Dh)
        b, _, tq, _ = ctx.shape
        ctx = ctx.transpose(1, 2).reshape(b, tq, self.heads * self.head_dim)  # (B, Tq, D)
        out = self.out_proj(ctx)
        if self.bmt_norms:
            out = self.out_norm(out) + ctx
        return out


def _ffn(layer: nn.Module, x: torch.Tensor, cfg: TransformerConfig) -> torch.Tensor:
    """fc2(act(fc1(x))) of ``layer``; with ``bmt_norms`` a LayerNorm after the activation and
    after fc2. fc1/fc2 live directly on the layer, as in Marian."""
    h = ACTIVATIONS[cfg.activation](layer.fc1(x))            # (B, L, F)
    if cfg.bmt_norms:
        h = layer.ffn_act_norm(h)
    h = F.dropout(h, p=cfg.activation_dropout, training=layer.training)
    h = layer.fc2(h)                                         # (B, L, D)
    if cfg.bmt_norms:
        h = layer.ffn_out_norm(h)
    return F.dropout(h, p=cfg.dropout, training=layer.training)


def _add_ffn(layer: nn.Module, cfg: TransformerConfig) -> None:
    layer.fc1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
    layer.fc2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
    layer.final_layer_norm = nn.LayerNorm(cfg.d_model)
    if cfg.bmt_norms:
        layer.ffn_act_norm = nn.LayerNorm(cfg.ffn_dim)
        layer.ffn_out_norm = nn.LayerNorm(cfg.d_model)


def _residual(x: torch.Tensor, norm: nn.LayerNorm, sublayer, pre: bool) -> torch.Tensor:
    """Post-norm: LN(x + f(x)); pre-norm: x + f(LN(x))."""
    if pre:
        return x + sublayer(norm(x))
    return norm(x + sublayer(x))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn = MultiHeadAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        _add_ffn(self, cfg)

    def forward(self, x: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:  # (B, S, D)
        cfg, pre = self.cfg, self.cfg.normalize_before
        drop = lambda h: F.dropout(h, p=cfg.dropout, training=self.training)  # noqa: E731
        x = _residual(x, self.self_attn_layer_norm, lambda h: drop(self.self_attn(h, mask=src_mask)), pre)
        return _residual(x, self.final_layer_norm, lambda h: _ffn(self, h, cfg), pre)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn = MultiHeadAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.encoder_attn = MultiHeadAttention(cfg)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        _add_ffn(self, cfg)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                tgt_mask: torch.Tensor | None, cache: dict | None = None) -> torch.Tensor:
        """y (B, T, D) target states, memory (B, S, D) encoder output -> (B, T, D)."""
        cfg, pre = self.cfg, self.cfg.normalize_before
        drop = lambda h: F.dropout(h, p=cfg.dropout, training=self.training)  # noqa: E731
        self_cache = cross_cache = None
        if cache is not None:
            self_cache = cache.setdefault("self", {})
            cross_cache = cache.setdefault("cross", {})
        y = _residual(y, self.self_attn_layer_norm,
                      lambda h: drop(self.self_attn(h, mask=tgt_mask, cache=self_cache)), pre)
        y = _residual(y, self.encoder_attn_layer_norm,
                      lambda h: drop(self.encoder_attn(h, memory, mask=src_mask, cache=cross_cache,
                                                       static_kv=True)), pre)
        return _residual(y, self.final_layer_norm, lambda h: _ffn(self, h, cfg), pre)


class Encoder(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        if cfg.normalize_before:  # pre-norm needs a last LayerNorm on the stack's output
            self.layer_norm = nn.LayerNorm(cfg.d_model)


class Decoder(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        if cfg.normalize_before:
            self.layer_norm = nn.LayerNorm(cfg.d_model)


class Seq2Seq(nn.Module):
    """Holds ``shared`` (the token embedding), ``encoder`` and ``decoder``: Marian's ``model``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_token_id)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)


class Transformer(nn.Module):
    """Encoder-decoder Transformer; ``forward(src, tgt_in)`` gives next-token logits.

    ``src`` (B, S) token ids ending in EOS, right-padded with ``pad_token_id``; ``tgt_in``
    (B, T) starts with ``decoder_start_token_id``. Decoding uses :meth:`encode` once and then
    :meth:`decode_step` per token with a key/value cache (see :mod:`lowbit.sw.decode`).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        self.model = Seq2Seq(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))
        self.register_buffer("positions", sinusoidal_positions(cfg.max_position_embeddings, cfg.d_model),
                             persistent=False)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.reset_parameters()
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.shared.weight

    def reset_parameters(self) -> None:
        """Xavier-uniform linear weights, zero biases, N(0, d^-1/2) embeddings (unit variance after
        the sqrt(d) scale), zero pad embedding."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        emb = self.model.shared.weight
        nn.init.normal_(emb, std=self.config.d_model ** -0.5)
        with torch.no_grad():
            emb[self.config.pad_token_id].zero_()

    # -- pieces -------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Token embedding * sqrt(D) + position (offset..offset+L-1), then dropout. (B, L) -> (B, L, D)."""
        n = ids.shape[1]
        if offset + n > self.positions.shape[0]:
            raise LowbitError(f"sequence of {offset + n} tokens is longer than max_position_embeddings "
                              f"{self.positions.shape[0]}")
        x = self.model.shared(ids) * self.embed_scale + self.positions[offset:offset + n]
        return F.dropout(x, p=self.config.dropout, training=self.training)

    def src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, 1, 1, S) bool, True at padding (keys nobody may attend to)."""
        return (src == self.config.pad_token_id)[:, None, None, :]

    def encode(self, src: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, S, D) encoder output."""
        mask = self.src_mask(src)
        x = self.embed(src)
        for layer in self.model.encoder.layers:
            x = layer(x, mask)
        if self.config.normalize_before:
            x = self.model.encoder.layer_norm(x)
        return x

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
               cache: list | None = None, offset: int = 0) -> torch.Tensor:
        """Decoder states -> logits. tgt_in (B, T), memory (B, S, D) -> (B, T, V).

        Without a cache the whole prefix is processed under a causal mask. With ``cache`` (a list
        with one dict per decoder layer) ``tgt_in`` holds only the new positions starting at
        ``offset``; earlier keys/values come from the cache.
        """
        t = tgt_in.shape[1]
        tgt_mask = None
        if t > 1:  # causal: position i may see keys 0..offset+i
            keys = offset + t
            tgt_mask = torch.ones(t, keys, dtype=torch.bool, device=tgt_in.device).triu(offset + 1)
        y = self.embed(tgt_in, offset)
        for i, layer in enumerate(self.model.decoder.layers):
            y = layer(y, memory, src_mask, tgt_mask, None if cache is None else cache[i])
        if self.config.normalize_before:
            y = self.model.decoder.layer_norm(y)
        return self.lm_head(y) + self.final_logits_bias    # (B, T, V)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: src (B, S), tgt_in (B, T) -> (B, T, V)."""
        return self.decode(tgt_in, self.encode(src), self.src_mask(src))

    # -- incremental decoding -----------------------------------------------------------------
    def new_cache(self) -> list:
        """An empty key/value cache, one dict per decoder layer."""
        return [{} for _ in self.model.decoder.layers]

    def decode_step(self, tokens: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor,
                    cache: list, step: int) -> torch.Tensor:
        """Logits for the next token: tokens (B,) at position ``step`` -> (B, V)."""
        return self.decode(tokens[:, None], memory, src_mask, cache, offset=step)[:, -1]

    @staticmethod
    def reorder_cache(cache: list, index: torch.Tensor, static_too: bool = True) -> list:
        """Keep rows ``index`` (beam search): cached tensors are indexed on their batch axis.

        With ``static_too=False`` the cross-attention keys/values are left alone: beam search
        only reorders hypotheses of the same sentence, whose encoder keys/values are identical.
        """
        for layer in cache:
            for name, part in layer.items():
                if name == "cross" and not static_too:
                    continue
                for key in part:
                    part[key] = part[key].index_select(0, index)
        return cache

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def allocated_elements(cfg: TransformerConfig) -> int:
    """Elements of every parameter and buffer ``Transformer(cfg)`` allocates, without allocating.

    Loaders compare this with the size of the weights file before they build the model, so a
    config that asks for more than the file can hold is refused instead of exhausting memory.
    Three models of one and two layers are built on the meta device (no storage); the layers of
    a stack are identical, so the count is linear in the layer counts.

    Raises
    ------
    LowbitError
        When even one layer is too large for torch to describe (sizes past 2**63 bytes).
    """
    sizes = (cfg.vocab_size, cfg.d_model, cfg.ffn_dim, cfg.max_position_embeddings)
    if max(sizes) >= 1 << 62:   # torch sizes are int64
        raise LowbitError(f"config: the model is too large to build (sizes {sizes})")

    def count(enc: int, dec: int) -> int:
        small = dataclasses.replace(cfg, encoder_layers=enc, decoder_layers=dec)
        try:
            with torch.device("meta"):
                m = Transformer(small)
        except RuntimeError as e:       # "Storage size calculation overflowed"
            raise LowbitError(f"config: the model is too large to build ({e})") from None
        return sum(t.numel() for t in (*m.parameters(), *m.buffers()))

    base = count(1, 1)
    return (base + (cfg.encoder_layers - 1) * (count(2, 1) - base)
            + (cfg.decoder_layers - 1) * (count(1, 2) - base))


ELEMENTS_PER_BYTE = 8       # a stored weight takes one bit at least (XNOR sign planes)
UNSTORED_ELEMENTS = 1 << 22  # room for buffers no weights file holds (the position table)


def check_fits(cfg: TransformerConfig, stored_bytes: int, stored_tensors: int, what: str) -> None:
    """Refuse, before anything is built, a config too large for the weights file it came with.

    Every layer stores at least one tensor and every element at least one bit, so a model of
    more than ``stored_tensors`` layers, or of more than ``ELEMENTS_PER_BYTE * stored_bytes +
    UNSTORED_ELEMENTS`` elements (:func:`allocated_elements`), cannot be what the file ``what``
    holds: a corrupted config must give an error, not exhaust memory or time building it.
    """
    layers = cfg.encoder_layers + cfg.decoder_layers
    if layers > stored_tensors:
        raise LowbitError(f"config: {layers} layers, but {what} holds only {stored_tensors} "
                          f"tensors")
    elements = allocated_elements(cfg)
    limit = ELEMENTS_PER_BYTE * stored_bytes + UNSTORED_ELEMENTS
    if elements > limit:
        raise LowbitError(f"config: the model has {elements} elements, more than {what} "
                          f"({stored_bytes} bytes) can hold")
