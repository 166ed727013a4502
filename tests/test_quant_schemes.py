"""Schemes: block assignment, matmul inventory (Wu's count), bits-per-weight accounting of every
scheme, Chung's per-word cluster sizes, and the mixed scheme's average below 3 bits."""

from __future__ import annotations

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.quant import qat
from lowbit.sw.quant.packed import weight_stats
from lowbit.sw.quant.schemes import (MIXED_BLOCK_PLANES, block_of, get_scheme, word_cluster_planes)

SMALL = dict(vocab_size=8000, d_model=256, encoder_layers=3, decoder_layers=3, attention_heads=4,
             ffn_dim=1024)   # the shipped model's shape


def test_blocks_of_marian_names():
    assert block_of("lm_head") == "output"
    assert block_of("model.encoder.layers.2.self_attn.q_proj") == "enc_self_attn"
    assert block_of("model.encoder.layers.0.self_attn.qk") == "enc_self_attn"
    assert block_of("model.encoder.layers.0.fc2") == "enc_ffn"
    assert block_of("model.decoder.layers.1.self_attn.out_proj") == "dec_self_attn"
    assert block_of("model.decoder.layers.1.encoder_attn.av") == "enc_dec_attn"
    assert block_of("model.decoder.layers.1.fc1") == "dec_ffn"
    assert block_of("model.shared") is None


def test_scheme_names():
    assert get_scheme("int6").linears["enc_ffn"].w_bits == 6
    assert get_scheme("log3").error_feedback
    assert get_scheme("bmt1a1").linears["dec_ffn"].act == "sign"
    for bad in ("int9", "int1", "log9", "log0", "bmt2", "", "INT8"):
        with pytest.raises(LowbitError, match="unknown quantization scheme"):
            get_scheme(bad)


def _model(scheme, **cfg):
    torch.manual_seed(0)
    model = qat.prepare_model(Transformer(TransformerConfig(**cfg)), scheme)
    if qat.needs_word_counts(qat.scheme_of(model)):
        qat.assign_word_planes(model, torch.arange(cfg["vocab_size"], 0, -1).double())
    return model


def test_every_matmul_is_integer_for_int_and_log_schemes():
    """Wu et al.'s count: 8 per encoder layer, 14 per decoder layer, 1 output projection."""
    cfg = dict(SMALL, vocab_size=64)
    for scheme in ("int8", "int6", "log4"):
        inv = qat.matmul_inventory(_model(scheme, **cfg))
        assert len(inv) == 3 * 8 + 3 * 14 + 1 == 67
        assert all(i["unit"] in ("int", "log") for i in inv)
        assert sum(i["name"].endswith((".qk", ".av")) for i in inv) == 18
    for scheme in ("bmt1", "bmt1a1"):
        bmt = qat.matmul_inventory(_model(scheme, **cfg))
        floats = sorted(i["name"] for i in bmt if i["unit"] == "float")
        assert len(floats) == 18 and "lm_head" not in floats     # QK^T, AV stay float (BMT)
        assert [i["params"] for i in bmt if i["name"] == "lm_head"] == \
            [{"a_planes": 8, "w_planes": 4}]                      # logits from 8-bit inputs
    mixed = qat.matmul_inventory(_model("mixed", **cfg))
    assert [i["unit"] for i in mixed if i["name"] == "lm_head"] == ["xnor"]
    assert sum(i["unit"] == "xnor" for i in mixed) == 67 - 18


def _expected_bits(scheme, cfg):
    """Bits of all weight codes, from the shapes alone (independent of the quantizer code)."""
    d, f, v = cfg["d_model"], cfg["ffn_dim"], cfg["vocab_size"]
    attn, ffn = 4 * d * d, 2 * d * f
    enc, dec = cfg["encoder_layers"], cfg["decoder_layers"]
    blocks = {"enc_self_attn": enc * attn, "enc_ffn": enc * ffn, "dec_self_attn": dec * attn,
              "enc_dec_attn": dec * attn, "dec_ffn": dec * ffn}
    linear = sum(blocks.values())
    if scheme.startswith(("int", "log")):
        b = int(scheme[-1])
        return b * (linear + v * d), linear + v * d
    planes = word_cluster_planes(torch.arange(v, 0, -1))
    if scheme.startswith("bmt"):    # 1 bit per weight, the embedding as in mixed
        return linear + int(planes.sum()) * d, linear + v * d
    return (sum(MIXED_BLOCK_PLANES[b] * n for b, n in blocks.items()) + int(planes.sum()) * d,
            linear + v * d)


@pytest.mark.parametrize("scheme", ["int8", "int6", "log4", "log2", "log1", "bmt1", "bmt1a1", "mixed"])
def test_bits_per_weight_accounting(scheme):
    cfg = dict(vocab_size=96, d_model=32, encoder_layers=2, decoder_layers=1, attention_heads=2,
               ffn_dim=64)
    stats = weight_stats(_model(scheme, **cfg))
    bits, elements = _expected_bits(scheme, cfg)
    assert stats["weight_elements"] == elements
    assert stats["weight_code_bits"] == bits
    if scheme.startswith(("int", "log")):
        assert stats["bits_per_weight"] == int(scheme[-1])


def test_word_clusters_follow_chungs_ratio():
    """Cluster sizes 1 : r : r^2 : r^3 for 4, 3, 2, 1 bits: averages 2.5 / 1.3 / 1.1 for r = 1/4/8."""
    counts = torch.rand(80000, generator=torch.Generator().manual_seed(0))
    for r, avg in ((1, 2.5), (4, 112 / 85), (8, 668 / 585)):
        planes = word_cluster_planes(counts, ratio=r)
        assert abs(float(planes.double().mean()) - avg) < 1e-3
    planes = word_cluster_planes(counts, ratio=4)
    top = counts.argsort(descending=True)
    assert int(planes[top[0]]) == 4 and int(planes[top[-1]]) == 1
    assert bool((planes[top[:900]] == 4).all())                  # the most frequent words: 4 bits
    ties = word_cluster_planes(torch.ones(8), ratio=1)           # ties broken by id
    assert ties.tolist() == [4, 4, 3, 3, 2, 2, 1, 1]


def test_mixed_averages_under_three_bits_on_the_shipped_shape():
    bits, elements = _expected_bits("mixed", SMALL)
    assert bits / elements < 3
    # and >= 11.8x smaller than FP32 counting only the codes' bits plus one float scale and one
    # 16-bit alpha per plane per row (the biases/LayerNorms add < 1%; the real package is checked
    # in test_quant_shipped.py)
    assert 32 / (bits / elements) > 11.8
