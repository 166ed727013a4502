"""QAT: error feedback (Aji & Heafield), phases (Chung; BMT), BMT norms added to a float model,
QAT checkpoints rebuilt by load_model, and `lowbit quantize` / `eval --json` / `report` end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.utils._python_dispatch

from lowbit import LowbitError
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.quant import qat
from lowbit.sw.quant.modules import QuantLinear

CFG = dict(vocab_size=60, d_model=32, encoder_layers=1, decoder_layers=1, attention_heads=2,
           ffn_dim=64, dropout=0.0, attention_dropout=0.0)


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 60, (4, 7), generator=g), torch.randint(3, 60, (4, 5), generator=g)


def test_error_feedback_keeps_weights_quantized_and_carries_the_residual():
    torch.manual_seed(0)
    hooks = qat.QATHooks("log3", log=lambda m: None)
    model = hooks.transform(Transformer(TransformerConfig(**CFG)))
    model.train()
    src, tgt = _batch()
    model(src, tgt)                                           # fits the log scales
    head = model.lm_head
    before = head.weight.detach().double().clone()
    with torch.no_grad():
        head.weight.add_(0.01)                                # an "optimizer step"
    hooks.after_step(model, 1)
    w = head.weight.detach().double()
    q = head.spec.quantize(w, log_scale=float(head.log_scale), refine=0).dequantize()
    assert torch.equal(w, q)                                  # the weight is a log-quantized value
    e = hooks.errors[id(head.weight)]
    assert torch.allclose(e, before + 0.01 - w, atol=1e-6)    # residual = value - Q(value)
    with torch.no_grad():
        head.weight.add_(0.0)
    hooks.after_step(model, 2)                                # the residual is added back
    assert torch.allclose(hooks.errors[id(head.weight)] + head.weight.detach().double(),
                          before + 0.01, atol=1e-6)
    # the tied embedding is one parameter, fed back once
    assert sum(1 for _, p in qat.log_weight_params(model) if p is model.model.shared.weight) == 1


class _ScalarReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts tensor-to-Python scalar reads (``.item()``, ``float(t)``, ``bool(t)``): each is a
    host-device sync when the tensor lives on a GPU."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("scheme", ["log4", "int8", "bmt1"])
def test_qat_step_reads_no_tensor_scalars(scheme):
    """A QAT training step (fake-quant forward, backward, error feedback) reads no tensor value
    back to Python, so on a GPU it never waits for the device. Log QAT used to validate every
    matrix's codes in each forward and feedback (300 syncs per step; 5x slower than bmt1 on an
    H100). The log scale refinement every ``LOG_REFRESH`` steps is the one allowed exception."""
    torch.manual_seed(0)
    hooks = qat.QATHooks(scheme, phase_steps=1, log=lambda m: None,
                         counts=torch.arange(float(CFG["vocab_size"])))   # bmt1: word planes
    model = hooks.transform(Transformer(TransformerConfig(**CFG)))
    model.train()
    src, tgt = _batch()
    model(src, tgt).sum().backward()                          # first step fits the log scales
    hooks.after_step(model, 1)                                # (bmt1: into the binarized phase)
    for step in (2, 3):
        model.zero_grad()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-3)                                  # an "optimizer step"
        with _ScalarReads() as reads:
            model(src, tgt).sum().backward()
            hooks.after_step(model, step)
        assert reads.count == 0, f"{scheme} step {step}: {reads.count} scalar reads"


def test_mixed_phases_switch_on_embedding_then_decoder_then_encoder():
    hooks = qat.QATHooks("mixed", phase_steps=10, counts=torch.arange(60.0), log=lambda m: None)
    model = hooks.transform(Transformer(TransformerConfig(**CFG)))

    def on():
        return {n.split(".")[1] if n.startswith("model.") else n
                for n, m in qat.quant_modules(model) if isinstance(m, QuantLinear) and m.enabled}

    assert on() == {"lm_head"}
    hooks.after_step(model, 10)
    assert on() == {"lm_head", "decoder"}
    hooks.after_step(model, 25)
    assert on() == {"lm_head", "decoder", "encoder"}
    assert int(model.lm_head.row_planes.min()) == 1 and int(model.lm_head.row_planes.max()) == 4


def test_bmt_adds_norms_and_starts_float():
    torch.manual_seed(0)
    base = Transformer(TransformerConfig(**CFG))
    src, tgt = _batch(1)
    base.eval()
    hooks = qat.QATHooks("bmt1", phase_steps=5, log=lambda m: None,
                         counts=torch.arange(float(CFG["vocab_size"])))
    model = hooks.transform(base)
    assert model.config.bmt_norms and model is not base
    assert hasattr(model.model.encoder.layers[0].self_attn, "q_norm")
    assert torch.equal(model.model.encoder.layers[0].fc1.weight, base.model.encoder.layers[0].fc1.weight)
    linears = [m for _, m in qat.quant_modules(model) if isinstance(m, QuantLinear)]
    assert "lm_head" in dict(qat.quant_modules(model))          # the embedding too (per-word)
    assert not any(m.enabled for m in linears)
    hooks.after_step(model, 5)
    assert all(m.enabled for m in linears)


def test_prepare_refuses_a_different_scheme():
    model = qat.prepare_model(Transformer(TransformerConfig(**CFG)), "int8")
    with pytest.raises(LowbitError, match="already quantized with scheme 'int8'"):
        qat.prepare_model(model, "log4")


def test_qat_checkpoint_is_rebuilt_by_load_model(tmp_path):
    from lowbit.sw.checkpoint import load_model, save_checkpoint
    from lowbit.sw.data import read_parallel, resolve_data_dir
    from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece

    en, de = read_parallel(resolve_data_dir(), "val")
    train_sentencepiece(en[:300] + de[:300], tmp_path / "spm.model", vocab_size=200)
    tok = Tokenizer(tmp_path / "spm.model")
    torch.manual_seed(0)
    model = qat.prepare_model(Transformer(TransformerConfig(**dict(CFG, vocab_size=200))), "mixed")
    qat.assign_word_planes(model, torch.arange(200.0))
    model.train()
    src, tgt = _batch(2)
    model(src, tgt)
    model.eval()
    save_checkpoint(model, tok, tmp_path / "ckpt")
    loaded, _, _ = load_model(tmp_path / "ckpt")
    assert qat.scheme_of(loaded).name == "mixed"
    assert torch.equal(loaded.lm_head.row_planes, model.lm_head.row_planes)
    assert torch.equal(loaded(src, tgt), model(src, tgt))


def test_quantize_eval_report_cli(tmp_path, capsys):
    """`lowbit train` (tiny) -> `lowbit quantize` (calibration, mixed word planes) ->
    `lowbit eval --json` -> `lowbit report`, on real Multi30k data."""
    from lowbit.cli import main

    base = tmp_path / "base"
    assert main(["train", "--config", "tiny", "--limit", "300", "--epochs", "1", "--vocab-size", "300",
                 "--out", str(base), "--eval-every", "5", "--val-limit", "20", "--avg-last", "1"]) == 0
    for scheme in ("mixed", "fp32"):
        assert main(["quantize", "--model", str(base), "--scheme", scheme, "-o", str(tmp_path / scheme),
                     "--calibrate-batches", "2"]) == 0
        assert main(["eval", "--model", str(tmp_path / scheme), "--limit", "8", "--beam", "2",
                     "--device", "cpu", "--json", str(tmp_path / "results.json")]) == 0
    out = capsys.readouterr().out
    assert "per-word planes from training-data frequencies" in out and "bits per weight" in out
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["scheme"] for r in records] == ["mixed", "fp32"] and records[0]["packed"]
    assert records[0]["bits_per_weight"] < 3 and not records[0]["retrained"]
    assert main(["report", "--results", str(tmp_path / "results.json"), "--docs", str(tmp_path / "docs"),
                 "--beam", "2"]) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| mixed | mixed | no |" in text and "| fp32 | fp32 | no |" in text
    assert (tmp_path / "docs" / "results_quality_bits.png").stat().st_size > 1000
    assert main(["quantize", "--model", str(tmp_path / "mixed"), "--scheme", "int8", "-o",
                 str(tmp_path / "x")]) == 2                  # a packed model is not re-quantized
    assert main(["quantize", "--model", str(base), "--scheme", "bmt1", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "already a packed model" in err and "needs BMT's extra LayerNorms" in err


def test_word_planes_option_is_checked_and_recorded():
    from lowbit.sw.quant.schemes import get_scheme, with_word_planes

    hooks = qat.QATHooks("bmt1", phase_steps=5, log=lambda m: None, word_planes=[5, 4, 3, 2],
                         counts=torch.arange(float(CFG["vocab_size"])))
    model = hooks.transform(Transformer(TransformerConfig(**CFG)))
    recorded = model.config.extra["qat"]
    assert recorded["word_planes"] == [5, 4, 3, 2] and recorded["embedding"] == "rows"
    assert model.lm_head.spec.w_bits == 5
    assert sorted(set(model.lm_head.row_planes.tolist())) == [2, 3, 4, 5]
    assert get_scheme("bmt1", recorded).linear_spec("output").w_bits == 5     # rebuilt as made
    assert get_scheme("mixed", {"word_planes": [2, 1]}).linear_spec("output").w_bits == 2
    assert get_scheme("mixed").options["word_planes"] == [4, 3, 2, 1]
    for planes, match in (([], "non-empty"), ([3, 0], r"in 1\.\.8"), ([9, 1], r"in 1\.\.8"),
                          ([2, 3], "must not increase"), ([2.0], "integers"), ([True], "integers")):
        with pytest.raises(LowbitError, match=match):
            with_word_planes(get_scheme("bmt1"), planes)
    for name in ("int8", "log4", "bmt1a1-nonorm", "fp32"):
        if name == "bmt1a1-nonorm":
            sch = get_scheme(name, {})          # recorded without the embedding: float embedding
        else:
            sch = get_scheme(name)
        with pytest.raises(LowbitError, match="word planes apply to mixed and the BMT schemes"):
            with_word_planes(sch, [2, 1])
