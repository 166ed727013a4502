"""BMT at the paper's size: the BMT schemes code the tied embedding/output matrix with per-word
binary planes (Chung et al.) on the XNOR unit, lookups decode the packed codes, packages made
before that still load as they were made, and retraining can replace the model's dropout."""

from __future__ import annotations

import json

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw import golden
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.quant import kernels, qat
from lowbit.sw.quant.modules import QuantEmbedding, QuantLinear
from lowbit.sw.quant.packed import load_packed, write_packed
from lowbit.sw.quant.schemes import MIXED_WORD_PLANES, get_scheme, word_cluster_planes
from lowbit.sw.quant.weights import RowGroups
from test_quant_packed import tokenizer  # noqa: F401 (fixture: a 300-piece joint tokenizer)

CFG = dict(d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=64,
           dropout=0.0, attention_dropout=0.0)


def _prepared(scheme: str, vocab: int, seed: int = 0, recorded: dict | None = None):
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=vocab, **CFG)
    if recorded is not None:
        cfg.extra["qat"] = recorded
    model = qat.prepare_model(Transformer(cfg), scheme)
    if qat.needs_word_counts(qat.scheme_of(model)):
        qat.assign_word_planes(model, torch.arange(vocab, 0, -1).double())
    return model.eval()


@pytest.mark.parametrize("scheme", ["bmt1", "bmt1a1", "bmt1a1-nonorm"])
def test_bmt_schemes_binary_code_the_embedding_per_word(scheme):
    sch = get_scheme(scheme)
    out = sch.linear_spec("output")
    assert (out.unit, out.weights, out.w_bits, out.act, out.a_bits) == ("xnor", "rows", 4, "token", 8)
    inner = sch.linear_spec("enc_ffn")
    assert (inner.weights, inner.act) == ("bmt", "token" if scheme == "bmt1" else "sign")
    assert sch.bmt_norms == (scheme != "bmt1a1-nonorm")
    model = _prepared(scheme, 96)
    assert isinstance(model.model.shared, QuantEmbedding)
    # the most frequent words (lowest ids here) get the most planes, Chung's clusters
    want = word_cluster_planes(torch.arange(96, 0, -1).double())
    assert torch.equal(model.lm_head.row_planes, want)
    assert model.config.extra["qat"] == {"scheme": scheme, "embedding": "rows",
                                         "word_planes": list(MIXED_WORD_PLANES), "ratio": 4.0}
    inventory = qat.matmul_inventory(model)
    assert {i["name"]: i["unit"] for i in inventory}["lm_head"] == "xnor"
    assert sum(i["unit"] == "float" for i in inventory) == 2 * 3   # Q.K^T, attention.V x 3


def test_a_bmt_model_saved_without_the_embedding_option_stays_float():
    """Packages and checkpoints made when BMT kept its embedding float record no ``embedding``
    option; they are rebuilt that way (the packages' weights are float there)."""
    old = get_scheme("bmt1", {"scheme": "bmt1"})
    assert old.linear_spec("output") is None and old.options == {}
    model = _prepared("bmt1", 96, recorded={"scheme": "bmt1"})
    assert not isinstance(model.lm_head, QuantLinear)
    assert model.config.extra["qat"] == {"scheme": "bmt1"}
    with pytest.raises(LowbitError, match="recorded options of scheme bmt1 must be an object"):
        get_scheme("bmt1", ["rows"])
    with pytest.raises(LowbitError, match="unknown quantization scheme 'bmt2'.*bmt1a1-nonorm"):
        get_scheme("bmt2")


@pytest.mark.parametrize("scheme", ["bmt1", "bmt1a1"])
def test_packed_bmt_embedding_is_gathered_from_its_packed_codes(scheme, tokenizer, tmp_path):
    v = len(tokenizer)
    model = _prepared(scheme, v)
    write_packed(model, tokenizer, tmp_path / scheme)
    manifest = json.loads((tmp_path / scheme / "manifest.json").read_text())
    tensors = manifest["tensors"]
    assert "model.shared.weight" not in tensors                 # no float embedding stored
    planes = word_cluster_planes(torch.arange(v, 0, -1).double())
    for p in MIXED_WORD_PLANES:
        n = int((planes == p).sum())
        assert tensors[f"lm_head.p{p}.weight"]["dtype"] == "sign"
        assert tensors[f"lm_head.p{p}.weight"]["shape"] == [p, n, CFG["d_model"]]
    assert manifest["stats"]["float_weight_elements"] == 0
    assert manifest["stats"]["bits_per_weight"] < 1.4

    loaded, _, meta = load_packed(tmp_path / scheme)
    emb = loaded.model.shared
    assert emb.mode == "int" and not hasattr(emb, "table")
    qw = loaded.lm_head.qweight
    assert isinstance(qw, RowGroups)
    # every id (the corner ids 0 and v-1 included, each plane-count group) in a batch shape
    ids = torch.tensor([[0, v - 1, 5], [1, 2, 0], [v - 2, 37, 200]])
    got = emb(ids)
    assert got.dtype == torch.float64 and got.shape == (3, 3, CFG["d_model"])
    want = qw.dequantize()[ids]
    assert torch.equal(got, want)
    # decoded straight from the packed words: unpack, weight the planes, scale the row
    for i in ids.flatten().tolist():
        p = int(planes[i])
        rows, part = next((r, g) for r, g in qw.groups if g.planes == p)
        j = int(torch.nonzero(rows == i))
        words = golden.pack_bits(part.signs[:, j])               # [P, W] as the package stores
        row = (golden.unpack_bits(words, CFG["d_model"]) * part.alpha[:, j, None]).sum(0)
        assert torch.equal(emb(torch.tensor([i]))[0], row.double() * part.scale[j])
    # the output layer is an XNOR matmul per plane-count group, 8-bit inputs
    with kernels.count_calls() as counts:
        loaded(torch.tensor([[5, 6, 2]]), torch.tensor([[0, 7]]))
    assert counts["lm_head"] == len(qw.groups) == len(MIXED_WORD_PLANES)


def test_quantize_assigns_word_planes_for_bmt(tokenizer, tmp_path):
    """A float model quantized straight to bmt1 (no QAT) gets its per-word planes from the
    training text's frequencies, as mixed does."""
    from lowbit.sw.data import read_parallel, resolve_data_dir
    from lowbit.sw.quant.cli import quantize_model

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=len(tokenizer), **CFG))
    model = qat.prepare_model(model, "bmt1")       # BMT norms first (as `lowbit train --qat` does)
    model = quantize_model(model, tokenizer, "bmt1", resolve_data_dir(), log=lambda m: None)
    src, tgt = read_parallel(resolve_data_dir(), "train")
    counts = qat.token_counts(tokenizer, src, tgt, len(tokenizer))
    assert torch.equal(model.lm_head.row_planes, word_cluster_planes(counts))


def test_rows_quantization_in_training_reads_nothing_back():
    """The row groups of per-word planes are found once when the planes are assigned; the
    quantized forward of a training step then reads no tensor value back to the host."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Reads.count += 1
            return func(*args, **(kwargs or {}))

    model = _prepared("bmt1a1", 96).train()
    src, tgt = torch.randint(3, 96, (2, 7)), torch.randint(3, 96, (2, 5))
    with Reads():
        model(src, tgt).sum().backward()
    assert Reads.count == 0
    with torch.no_grad():
        model.lm_head.row_planes[:] = 1                # new planes: found again
    assert [p for p, _ in model.lm_head._row_groups()] == [1]


def test_retraining_replaces_the_dropout(tmp_path):
    from lowbit.sw.data import resolve_data_dir
    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.train import TrainOptions, train

    opts = dict(epochs=1, max_tokens=512, limit=64, val_limit=8, vocab_size=300, warmup=5,
                avg_last=1, eval_every=5)
    cfg = json.dumps(dict(CFG, dropout=0.3))
    train(resolve_data_dir(), tmp_path / "a", cfg, TrainOptions(**opts), device="cpu",
          log=lambda m: None)
    seen = []
    train(resolve_data_dir(), tmp_path / "b", None, TrainOptions(**opts, dropout=0.05),
          init=str(tmp_path / "a"), device="cpu", log=lambda m: None,
          transform_model=lambda m: seen.append(m.config.dropout) or m)
    assert seen == [0.05]
    assert load_model(tmp_path / "a")[0].config.dropout == 0.3
    assert load_model(tmp_path / "b")[0].config.dropout == 0.05
    for bad in (1.0, -0.1):
        with pytest.raises(LowbitError, match=rf"--dropout must be in \[0, 1\), not {bad}"):
            TrainOptions(dropout=bad)


def test_bmt1a1_continues_from_a_bmt1_model():
    """The progressive recipe: a bmt1 model (1-bit weights, 8-bit inputs) retrained with its
    inputs binarized keeps every weight, bias and norm, and quantizes the inputs of the
    binarized layers to 1 bit (the output layer keeps its 8-bit inputs and its word planes)."""
    model = _prepared("bmt1", 96, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head, shared = model.lm_head, model.model.shared
    out = qat.prepare_model(model, get_scheme("bmt1a1"))
    assert out is model and model.config.extra["qat"]["scheme"] == "bmt1a1"
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    acts = {n: m.act.kind for n, m in qat.quant_modules(model) if isinstance(m, QuantLinear)}
    assert acts.pop("lm_head") == "token" and set(acts.values()) == {"sign"}
    assert model.lm_head is head and model.model.shared is shared   # the tied pair untouched
    # its forward is now the bmt1a1 model's with the same weights
    ref = _prepared("bmt1a1", 96, seed=3)
    ref.load_state_dict(after)
    src = torch.randint(3, 96, (2, 7))
    tgt = torch.randint(3, 96, (2, 5))
    with torch.no_grad():
        assert torch.equal(model(src, tgt), ref(src, tgt))
        assert not torch.equal(model(src, tgt), _prepared("bmt1", 96, seed=3)(src, tgt))


@pytest.mark.parametrize("old, new", [("bmt1", "int8"), ("bmt1", "bmt1a1-nonorm"), ("mixed", "bmt1")])
def test_only_an_input_quantizer_change_continues_another_scheme(old, new):
    model = _prepared(old, 96)
    with pytest.raises(LowbitError, match=rf"already quantized with scheme '{old}', not '{new}'"):
        qat.prepare_model(model, get_scheme(new))
