"""The integer-only decode (schemes int8i, log4i): retraining's fake mode computes exactly the
integers of the integer-only model, packing keeps them, the decode runs no floating-point tensor
operation (and a planted one is caught), and the search rules hold."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.sw import golden_ops as gops
from lowbit.sw.decode import DecodeOptions, decode_batch
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.quant import intdecode, qat
from lowbit.sw.quant.integer import IntegerTransformer
from lowbit.sw.quant.intcheck import FloatOperation, check_integer, integer_guard
from lowbit.sw.quant.packed import load_packed, write_packed
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece

from nmt_fixtures import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def data():
    from lowbit.sw.data import read_parallel, resolve_data_dir

    return resolve_data_dir(), read_parallel(resolve_data_dir(), "val")


@pytest.fixture(scope="module")
def tokenizer(data, tmp_path_factory):
    en, de = data[1]
    path = tmp_path_factory.mktemp("tok") / "spm.model"
    train_sentencepiece(en[:400] + de[:400], path, vocab_size=300)
    return Tokenizer(path)


def _batches(tokenizer, data, n=3, size=6):
    en, de = data[1]
    out = []
    for j in range(n):
        src = [tokenizer.encode(s, "source") for s in en[j * size:(j + 1) * size]]
        tgt = [[0] + tokenizer.encode(s, "target")[:-1] for s in de[j * size:(j + 1) * size]]
        pad = lambda rows: torch.nn.utils.rnn.pad_sequence(  # noqa: E731
            [torch.tensor(r) for r in rows], batch_first=True, padding_value=0)
        out.append((pad(src), pad(tgt)))
    return out


def trained_tiny(scheme, tokenizer, data, steps=4, seed=0):
    """A tiny model prepared for ``scheme``, calibrated, then a few retraining steps with
    dropout (so that the weights, ranges and dropout paths have all moved)."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2,
                            decoder_layers=2, attention_heads=2, ffn_dim=64, dropout=0.2,
                            attention_dropout=0.1)
    model = qat.prepare_model(Transformer(cfg), scheme)
    batches = _batches(tokenizer, data)
    qat.calibrate(model, batches)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(steps):
        src, tgt = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(src, tgt).flatten(0, 1),
                                                 tgt.roll(-1, 1).flatten(), ignore_index=0)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None or bool(torch.isfinite(p.grad).all())
                   for p in model.parameters())
        opt.step()
    return model.eval(), batches


@pytest.mark.parametrize("scheme", ["int8i", "log4i"])
def test_fake_mode_computes_the_integer_models_values(scheme, tokenizer, data):
    model, batches = trained_tiny(scheme, tokenizer, data)
    assert isinstance(model, IntegerTransformer)
    integer = qat.to_integer(copy.deepcopy(model))
    assert integer.integer_only
    unit = math.log(2.0) / 2 ** gops.SCORE_FRAC_BITS
    for src, tgt in batches:
        with torch.no_grad():
            z = integer(src, tgt)
            fake = model(src, tgt).double()
        assert z.dtype == torch.int64
        assert torch.equal(torch.round(fake / unit).long(), z)
    # greedy decoding: the float search on the fake-mode logits picks the same tokens
    src = batches[0][0]
    opts = DecodeOptions(beam=1)
    assert decode_batch(integer, src, opts) == decode_batch(model, src, opts)


def test_packed_model_decodes_like_the_model_it_was_packed_from(tokenizer, data, tmp_path):
    model, batches = trained_tiny("int8i", tokenizer, data)
    directory = write_packed(model, tokenizer, tmp_path / "int8i")
    loaded, _, meta = load_packed(directory)
    assert meta["scheme"] == "int8i" and loaded.integer_only
    assert "integer-only" in (directory / "meta.json").read_text()
    integer = qat.to_integer(copy.deepcopy(model))
    for beam in (1, 3):
        opts = DecodeOptions(beam=beam)
        for src, _ in batches:
            assert decode_batch(loaded, src, opts) == decode_batch(integer, src, opts)


def test_decode_runs_no_float_operation_and_a_planted_one_is_caught(tokenizer, data,
                                                                     monkeypatch):
    model, batches = trained_tiny("int8i", tokenizer, data, steps=1)
    integer = qat.to_integer(model)
    en = data[1][0][:6]
    ok, what = check_integer(integer, tokenizer, en, DecodeOptions(beam=2), log=lambda m: None)
    assert ok and int(what.split()[0]) > 1000
    # the guarded decode (int64 matmul evaluation) gives the tokens of the normal one
    with integer_guard():
        guarded = decode_batch(integer, batches[0][0], DecodeOptions(beam=2))
    assert guarded == decode_batch(integer, batches[0][0], DecodeOptions(beam=2))
    # plant one float operation inside the softmax
    real = gops.softmax
    monkeypatch.setattr(gops, "softmax",
                        lambda z, mask=None, **kw: real(z.double().long(), mask, **kw))
    ok, what = check_integer(integer, tokenizer, en, DecodeOptions(beam=1), log=lambda m: None)
    assert not ok
    assert "Tensor.double" in what and "sw/quant/integer.py" in what and "_softmax" in what
    with pytest.raises(FloatOperation, match=r"Tensor\.double"):
        with integer_guard():
            decode_batch(integer, batches[0][0], DecodeOptions(beam=1))


def test_every_operation_goes_through_its_substitution_point(tokenizer, data):
    """Integer mode calls every operation of kernels.OPS through kernels.call_op, with its site
    visible: substitutes that record and forward give the same tokens; a substitute that
    changes one operation's result changes the decode (nothing bypasses the hook)."""
    from lowbit.sw.quant import kernels

    model, batches = trained_tiny("int8i", tokenizer, data, steps=1)
    integer = qat.to_integer(model)
    src, opts = batches[0][0][:4], DecodeOptions(beam=1)
    want = decode_batch(integer, src, opts)
    seen = []

    def recording(name):
        def run(*args, **kwargs):
            site = kernels.current_site()
            seen.append((name, site.op, site.name))
            return getattr(kernels.OPS[name], name)(*args, **kwargs)
        return run

    beam = DecodeOptions(beam=2)
    want_beam = decode_batch(integer, src, beam)
    with kernels.use_kernels(**{name: recording(name) for name in kernels.OPS}):
        assert decode_batch(integer, src, opts) == want
        assert decode_batch(integer, src, beam) == want_beam
    assert {name for name, _, _ in seen} == set(kernels.OPS)
    assert all(name == op for name, op, _ in seen)
    where = {site for _, _, site in seen}
    assert {"encoder.embedding", "decoder.embedding", "lm_head.scores", "lm_head.argmax",
            "model.encoder.layers.0.self_attn.qk.softmax",
            "model.decoder.layers.0.encoder_attn.qk.softmax",
            "model.decoder.layers.0.fc2.layernorm", "lm_head.log_softmax"} <= where, sorted(where)

    def last_token(z, **kw):   # argmax that always answers the last id
        return torch.full(z.shape[:-1], z.shape[-1] - 1, dtype=torch.int64)

    with kernels.use_kernels(argmax=last_token):
        assert decode_batch(integer, src, opts) != want


def test_float_host_model_is_reported_with_its_first_float_operation(tokenizer, data):
    model = qat.to_integer(trained_tiny("int8", tokenizer, data, steps=0)[0])
    ok, what = check_integer(model, tokenizer, data[1][0][:2], DecodeOptions(beam=1),
                             log=lambda m: None)
    assert not ok and what.startswith("first floating-point operation: ")


def test_check_integer_command(tokenizer, data, tmp_path, capsys):
    model, _ = trained_tiny("int8i", tokenizer, data, steps=1)
    directory = write_packed(model, tokenizer, tmp_path / "int8i")
    args = ["check-integer", "--model", str(directory), "--data-dir", str(data[0]),
            "--split", "val", "--limit", "3", "--beam", "2"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("integer-only: yes (") and last.endswith(" tensor ops checked)")
    int8 = write_packed(trained_tiny("int8", tokenizer, data, steps=0)[0], tokenizer,
                        tmp_path / "int8")
    assert main(args[:2] + [str(int8)] + args[3:]) == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("integer-only: no (first floating-point operation: ")
    assert main(args + ["--beam", "0"]) == 2
    assert "lowbit: error: --beam must be a positive integer, not 0" in capsys.readouterr().err


def test_integer_search_rules(tokenizer, data):
    model = qat.to_integer(trained_tiny("int8i", tokenizer, data, steps=0)[0])
    src = _batches(tokenizer, data, n=1)[0][0]
    with pytest.raises(LowbitError, match=r"--length-penalty must be 0 or 1, not 0\.6"):
        intdecode.beam_search(model, src, DecodeOptions(beam=2, length_penalty=0.6))
    # length limits: the float decode's float32 arithmetic, clamped to 1..limit
    opts = DecodeOptions(max_len_a=1.5, max_len_b=10)
    lengths = intdecode.max_lengths(src, 0, opts, 20)
    want = [min(max(int(n * 1.5 + 10), 1), 20) for n in (src != 0).sum(1).tolist()]
    assert lengths == want
    # ranking ties: the lower candidate index first
    values, index = intdecode._top(torch.tensor([[3, 5, 5, 1, 5]]), 3)
    assert values.tolist() == [[5, 5, 5]] and index.tolist() == [[1, 2, 4]]
    # beam 1 and greedy agree
    assert (intdecode.beam_search(model, src, DecodeOptions(beam=1))
            == intdecode.decode_batch(model, src, DecodeOptions(beam=1)))


def test_unsupported_models_are_refused():
    cfg = TransformerConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                            attention_heads=2, ffn_dim=32, normalize_before=True)
    with pytest.raises(LowbitError, match=r"integer-only decoding supports post-norm ReLU models "
                                          r"with tied embeddings, not pre-norm"):
        qat.prepare_model(Transformer(cfg), "int8i")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_gpu_give_the_same_tokens(tokenizer, data, tmp_path):
    model, batches = trained_tiny("int8i", tokenizer, data)
    directory = write_packed(model, tokenizer, tmp_path / "int8i")
    cpu, _, _ = load_packed(directory, "cpu")
    gpu, _, _ = load_packed(directory, "cuda")
    for beam in (1, 4):
        for src, _ in batches:
            opts = DecodeOptions(beam=beam)
            assert decode_batch(cpu, src, opts) == decode_batch(gpu, src.cuda(), opts)
