"""The Transformer: shapes, Marian layout, swappable matmul modules, incremental decoding, search."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lowbit import LowbitError
from lowbit.sw.decode import DecodeOptions, beam_search, greedy_search
from lowbit.sw.model import MatMul, Transformer, TransformerConfig, sinusoidal_positions
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

VOCAB = 61


def small_config(**kw):
    base = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, attention_heads=4,
                ffn_dim=48, max_position_embeddings=64)
    base.update(kw)
    return TransformerConfig(**base)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, VOCAB, (4, 11), generator=g)
    src[:, -1] = 2
    src[2, 7:] = 0   # padded rows of different lengths
    src[2, 6] = 2
    src[3, 4:] = 0
    src[3, 3] = 2
    tgt = torch.randint(3, VOCAB, (4, 9), generator=g)
    tgt[:, 0] = 0
    return src, tgt


VARIANTS = list(itertools.product([False, True], [False, True], ["relu", "swish"]))


@pytest.mark.parametrize("pre,bmt,act", VARIANTS)
def test_incremental_decoding_equals_full_forward(pre, bmt, act):
    torch.manual_seed(0)
    model = Transformer(small_config(normalize_before=pre, bmt_norms=bmt, activation=act)).eval()
    src, tgt = batch()
    full = model(src, tgt)                                       # (B, T, V)
    assert full.shape == (4, 9, VOCAB)
    memory, mask = model.encode(src), model.src_mask(src)
    assert memory.shape == (4, 11, 32)
    cache = model.new_cache()
    steps = torch.stack([model.decode_step(tgt[:, i], memory, mask, cache, i) for i in range(9)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    # the cross-attention keys/values were computed once and kept
    assert cache[0]["cross"]["k"].shape == (4, 4, 11, 8)
    assert cache[0]["self"]["k"].shape == (4, 4, 9, 8)


def test_padding_does_not_change_a_sentence():
    torch.manual_seed(0)
    model = Transformer(small_config()).eval()
    src, tgt = batch()
    alone = model(src[3:4, :4], tgt[3:4])
    padded = model(src[3:4], tgt[3:4])
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_marian_parameter_names_and_tied_head():
    model = Transformer(small_config(bmt_norms=True))
    names = set(model.state_dict())
    for name in ["model.shared.weight", "lm_head.weight", "final_logits_bias",
                 "model.encoder.layers.0.self_attn.q_proj.weight", "model.encoder.layers.1.fc2.bias",
                 "model.encoder.layers.0.self_attn_layer_norm.weight", "model.encoder.layers.0.final_layer_norm.bias",
                 "model.decoder.layers.1.encoder_attn.out_proj.weight",
                 "model.decoder.layers.0.encoder_attn_layer_norm.weight",
                 "model.decoder.layers.0.self_attn.q_norm.weight", "model.decoder.layers.0.ffn_act_norm.weight"]:
        assert name in names, name
    assert "positions" not in names  # recomputed, never stored
    assert model.lm_head.weight is model.model.shared.weight
    untied = Transformer(small_config(tie_word_embeddings=False))
    assert untied.lm_head.weight is not untied.model.shared.weight


def test_sinusoidal_positions_are_marians_layout():
    pos = sinusoidal_positions(5, 6)
    p, i = 3, 1
    assert pos[p, i].item() == pytest.approx(torch.sin(torch.tensor(p / 10000 ** (2 * i / 6))).item())
    assert pos[p, 3 + i].item() == pytest.approx(torch.cos(torch.tensor(p / 10000 ** (2 * i / 6))).item())
    assert torch.equal(pos[0, :3], torch.zeros(3)) and torch.equal(pos[0, 3:], torch.ones(3))


@pytest.mark.parametrize("bmt", [False, True])
def test_every_matmul_goes_through_a_swappable_module(bmt):
    """Replace every Linear and MatMul with a counting subclass: the forward pass must call each
    one, and the count of products must be the architecture's (4 per attention + 2 per FFN +
    the vocabulary projection; 2 activation products per attention)."""
    cfg = small_config(bmt_norms=bmt)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    calls = {"linear": 0, "matmul": 0}

    class CountingLinear(nn.Linear):
        def forward(self, x):
            calls["linear"] += 1
            return super().forward(x)

    class CountingMatMul(MatMul):
        def forward(self, a, b):
            calls["matmul"] += 1
            return super().forward(a, b)

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                child.__class__ = CountingLinear
            elif isinstance(child, MatMul):
                setattr(module, name, CountingMatMul())
    src, tgt = batch()
    before = model(src, tgt)
    attentions = cfg.encoder_layers + 2 * cfg.decoder_layers
    ffns = cfg.encoder_layers + cfg.decoder_layers
    assert calls == {"linear": 4 * attentions + 2 * ffns + 1, "matmul": 2 * attentions}
    # and a swapped module's arithmetic is the one used: halve the output projection
    model.lm_head.__class__ = type("Half", (nn.Linear,), {"forward": lambda self, x: F.linear(x, self.weight) / 2})
    after = model(src, tgt)
    torch.testing.assert_close(after - model.final_logits_bias, (before - model.final_logits_bias) / 2)


def test_bmt_norms_train():
    """The BMT variant learns a toy copy task (loss falls well below its start)."""
    torch.manual_seed(0)
    model = Transformer(small_config(bmt_norms=True, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    src, _ = batch()
    src = src.masked_fill(src == 0, 2)
    tgt_in = torch.cat([torch.zeros(4, 1, dtype=torch.long), src[:, :-1]], 1)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(src, tgt_in).flatten(0, 1), src.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_beam_one_is_greedy_and_beam_scores_at_least_greedy():
    torch.manual_seed(1)
    model = Transformer(small_config(dropout=0.0)).eval()
    with torch.no_grad():  # make the output distribution peaky enough to end sentences
        model.final_logits_bias[0, 2] = 2.0
    src, _ = batch(3)
    opts = DecodeOptions(max_len_a=1.0, max_len_b=5)
    greedy = greedy_search(model, src, opts)
    assert beam_search(model, src, DecodeOptions(beam=1, max_len_a=1.0, max_len_b=5)) == greedy
    beams = beam_search(model, src, DecodeOptions(beam=4, max_len_a=1.0, max_len_b=5, length_penalty=0.0))

    def logprob(i, ids):  # sum of log p(token) including EOS (unless cut at the length limit)
        tgt = torch.tensor([[0] + ids])
        lp = torch.log_softmax(model(src[i:i + 1], tgt), -1)[0]
        full = ids + [2]
        return sum(lp[t, tok].item() for t, tok in enumerate(full[:lp.shape[0]]))

    for i in range(4):
        assert len(greedy[i]) <= int((src[i] != 0).sum()) + 5
        assert logprob(i, beams[i]) >= logprob(i, greedy[i]) - 1e-4


def test_config_errors():
    with pytest.raises(LowbitError, match="d_model 30 is not divisible by attention_heads 4"):
        small_config(d_model=30)
    with pytest.raises(LowbitError, match="activation must be one of"):
        small_config(activation="tanh")
    with pytest.raises(LowbitError, match="dropout must be in"):
        small_config(dropout=1.0)
    with pytest.raises(LowbitError, match="eos_token_id 99 is outside the vocabulary"):
        small_config(eos_token_id=99)
    with pytest.raises(LowbitError, match="unknown field.*layers"):
        TransformerConfig.from_dict({"layers": 3})
    with pytest.raises(LowbitError, match="encoder_layers must be a positive integer"):
        small_config(encoder_layers=0)
    model = Transformer(small_config(max_position_embeddings=8))
    with pytest.raises(LowbitError, match="longer than max_position_embeddings 8"):
        model.encode(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(LowbitError, match="beam size must be a positive integer"):
        DecodeOptions(beam=0)
