"""MarianMT interoperability: a random transformers MarianMTModel imports with identical logits,
and our models export to a directory transformers loads with identical logits."""

import json

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import read_lines, resolve_data_dir, split_path
from lowbit.sw.hf import export_hf, import_hf
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    """A randomly initialised MarianMTModel with Marian's own conventions (swish, scaled embeddings,
    pad = last id, eos = 0) and its tokenizer files, saved by transformers."""
    d = tmp_path_factory.mktemp("marian")
    data = resolve_data_dir()
    text = read_lines(split_path(data, "val", "en"))[:500] + read_lines(split_path(data, "val", "de"))[:500]
    train_sentencepiece(text, d / "source.spm", vocab_size=300)
    (d / "target.spm").write_bytes((d / "source.spm").read_bytes())
    sp = Tokenizer(d / "source.spm")
    pieces = [p for p, _ in sorted(sp.vocab.items(), key=lambda kv: kv[1]) if p not in ("<pad>", "</s>", "<unk>")]
    vocab = {"</s>": 0, "<unk>": 1, **{p: i + 2 for i, p in enumerate(pieces)}}
    vocab["<pad>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab), decoder_vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        activation_function="swish", scale_embedding=True, max_position_embeddings=64,
        pad_token_id=len(vocab) - 1, eos_token_id=0, decoder_start_token_id=len(vocab) - 1)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(cfg).eval()
    with torch.no_grad():  # a non-zero bias so that its import is tested too
        model.final_logits_bias.normal_()
    model.save_pretrained(d)
    return d


def _inputs(vocab_size, pad):
    g = torch.Generator().manual_seed(1)
    src = torch.randint(2, vocab_size - 1, (3, 9), generator=g)
    src[:, -1] = 0
    src[1, 6:] = pad  # a padded row
    src[1, 5] = 0
    tgt = torch.randint(2, vocab_size - 1, (3, 7), generator=g)
    tgt[:, 0] = pad
    return src, tgt


def _hf_logits(model, src, tgt, pad):
    with torch.no_grad():
        return model(input_ids=src, attention_mask=(src != pad).long(), decoder_input_ids=tgt).logits


def test_import_hf_matches_transformers_logits(marian_dir, tmp_path):
    hf_model = transformers.MarianMTModel.from_pretrained(marian_dir).eval()
    out = import_hf(marian_dir, tmp_path / "ours")
    model, tok, _ = load_model(out)
    pad = model.config.pad_token_id
    src, tgt = _inputs(model.config.vocab_size, pad)
    ours = model(src, tgt)
    theirs = _hf_logits(hf_model, src, tgt, pad)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    # the tokenizer maps pieces through vocab.json, as MarianTokenizer does
    hf_tok = transformers.MarianTokenizer.from_pretrained(marian_dir)
    sentence = "Two young men are playing football on the grass."
    assert tok.encode(sentence) == hf_tok(sentence)["input_ids"]


def test_export_hf_round_trip(marian_dir, tmp_path):
    model, tok, _ = load_model(import_hf(marian_dir, tmp_path / "ours"))
    export_hf(model, tok, tmp_path / "hf")
    hf_model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    pad = model.config.pad_token_id
    src, tgt = _inputs(model.config.vocab_size, pad)
    torch.testing.assert_close(model(src, tgt), _hf_logits(hf_model, src, tgt, pad), atol=1e-5, rtol=1e-5)
    # importing the export gives back the same weights, bit for bit
    again, _, _ = load_model(import_hf(tmp_path / "hf", tmp_path / "again"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_export_hf_of_a_lowbit_trained_style_model(tmp_path):
    """Our own conventions (relu, pad 0, joint spm.model) survive export: transformers gives the
    same logits and MarianTokenizer the same ids."""
    data = resolve_data_dir()
    train_sentencepiece(read_lines(split_path(data, "val", "en"))[:300], tmp_path / "spm.model", 200)
    tok = Tokenizer(tmp_path / "spm.model")
    torch.manual_seed(3)
    model = Transformer(TransformerConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=2,
                                          attention_heads=2, ffn_dim=48, max_position_embeddings=64)).eval()
    with torch.no_grad():
        model.final_logits_bias.normal_()
    export_hf(model, tok, tmp_path / "hf")
    hf_model = transformers.MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    src, tgt = _inputs(len(tok), 0)
    torch.testing.assert_close(model(src, tgt), _hf_logits(hf_model, src, tgt, 0), atol=1e-5, rtol=1e-5)
    hf_tok = transformers.MarianTokenizer.from_pretrained(tmp_path / "hf")
    sentence = "A dog runs through the snow."
    assert tok.encode(sentence) == hf_tok(sentence)["input_ids"]


@pytest.mark.parametrize("field", ["normalize_before", "bmt_norms"])
def test_export_hf_refuses_non_marian_architectures(tmp_path, field):
    cfg = TransformerConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2,
                            ffn_dim=32, **{field: True})
    with pytest.raises(LowbitError, match=field):
        export_hf(Transformer(cfg), None, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_import_hf_errors(tmp_path, marian_dir):
    with pytest.raises(LowbitError, match="not a directory"):
        import_hf(tmp_path / "nope", tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(LowbitError, match="config.json is missing"):
        import_hf(bad, tmp_path / "out")
    (bad / "config.json").write_text(json.dumps({"model_type": "bart"}))
    for name in ("source.spm", "target.spm", "vocab.json"):
        (bad / name).write_bytes((marian_dir / name).read_bytes())
    with pytest.raises(LowbitError, match="model_type is 'bart'"):
        import_hf(bad, tmp_path / "out")
    (bad / "config.json").write_text((marian_dir / "config.json").read_text())
    with pytest.raises(LowbitError, match="no model.safetensors"):
        import_hf(bad, tmp_path / "out")
