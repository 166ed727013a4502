"""MarianMT interoperability: a random transformers MarianMTModel imports with identical logits,
our models export to a directory transformers loads with identical logits, and transformers'
generate() with the arguments docs/nmt.md gives reproduces `lowbit eval` line for line."""

import json
import os
from collections import defaultdict

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import read_lines, read_parallel, resolve_data_dir, split_path
from lowbit.sw.decode import DecodeOptions, corpus_bleu, translate
from lowbit.sw.hf import export_hf, import_hf
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()  # max_new_tokens overriding max_length is intended
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


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


def hf_translate(directory, sentences, num_beams):
    """transformers' translations with docs/nmt.md's generate() arguments: lowbit's length
    limit ``max_new_tokens = int(1.5 * n + 10)`` for n source ids (</s> included), so sentences
    of equal n are batched together."""
    model = transformers.MarianMTModel.from_pretrained(directory).eval()
    assert model.dtype == torch.float32  # computes as lowbit does, whatever the stored dtype
    tok = transformers.MarianTokenizer.from_pretrained(directory)
    by_length = defaultdict(list)
    for i, s in enumerate(sentences):
        by_length[len(tok(s)["input_ids"])].append(i)
    out = [None] * len(sentences)
    for n, group in by_length.items():
        batch = tok([sentences[i] for i in group], return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = model.generate(**batch, num_beams=num_beams, early_stopping=True,
                                 max_new_tokens=int(1.5 * n + 10))
        for i, row in zip(group, ids):
            out[i] = tok.decode(row, skip_special_tokens=True)
    return out


@pytest.fixture(scope="module")
def test_2016():
    """The first 100 sentences (LOWBIT_PEER_SENTENCES=1000: the whole split, as docs/nmt.md reports)."""
    return read_parallel(resolve_data_dir(), "test_2016_flickr",
                         limit=int(os.environ.get("LOWBIT_PEER_SENTENCES", "100")))


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory):
    model, tok, _ = load_model()
    return model, tok, export_hf(model, tok, tmp_path_factory.mktemp("export") / "hf")


@pytest.mark.parametrize("beam", [1, 5])
def test_transformers_reproduces_lowbit_eval(shipped_export, test_2016, beam):
    """Line for line on test_2016 (one of the first 100 sentences runs to its length limit under
    greedy search). Greedy needs the export's generation_config without a forced end token:
    lowbit ends a sentence at its length limit without one, transformers'
    ForcedEOSTokenLogitsProcessor would replace its last token by </s>."""
    model, tok, directory = shipped_export
    src, _ = test_2016
    ours = translate(model, tok, src, DecodeOptions(beam=beam))
    assert hf_translate(directory, src, beam) == ours


def test_export_hf_stores_the_weights_once_at_their_own_dtype(shipped_export):
    from safetensors.torch import load_file

    model, _, directory = shipped_export
    state = load_file(str(directory / "model.safetensors"))
    # the shipped weights are float16 values: stored as float16, once (transformers ties the
    # embeddings and lm_head to model.shared)
    assert {t.dtype for t in state.values()} == {torch.float16}
    assert not {"lm_head.weight", "model.encoder.embed_tokens.weight"} & set(state)
    ours = model.state_dict()
    for name, t in state.items():
        assert torch.equal(t.float(), ours[name]), name
    assert (directory / "model.safetensors").stat().st_size < 16e6
    generation = json.loads((directory / "generation_config.json").read_text())
    assert generation["forced_eos_token_id"] is None and generation["early_stopping"] is True


def test_export_hf_of_a_packed_model_has_its_golden_weights(tmp_path, test_2016):
    """A packed model's export holds its dequantized integer weights (never the float
    parameters a packed model leaves at their random initial values), the tied embedding once,
    and translates well (activation quantization is not exported, so not identically)."""
    from safetensors.torch import load_file

    from lowbit.sw.quant.modules import QuantLinear

    model, tok, _ = load_model("multi30k-en-de-int8")
    export_hf(model, tok, tmp_path / "hf")
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert {t.dtype for t in state.values()} == {torch.float32}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(linears) == 3 * 6 + 3 * 10 + 1
    for name, m in linears.items():
        golden = m.qweight.dequantize().float()
        key = "model.shared.weight" if name == "lm_head" else f"{name}.weight"
        assert torch.equal(state[key], golden), name
        assert not torch.equal(state[key], m.weight.float()), name  # not the unused parameter
        if m.bias is not None:  # the integer bias at the accumulator scale, as the unit adds it
            assert torch.equal(state[f"{name}.bias"], (m.ints.bias_int * m.ints.acc_scale).float())
    src, ref = test_2016
    hyps = hf_translate(tmp_path / "hf", src[:50], 1)
    assert corpus_bleu(hyps, ref[:50])[0].score > 30


def test_export_hf_refuses_a_bmt_packed_model(tmp_path):
    model, tok, _ = load_model("multi30k-en-de-bmt1")
    with pytest.raises(LowbitError, match="bmt_norms"):
        export_hf(model, tok, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_hf_output_directory(shipped_export, tmp_path):
    """A non-empty directory is refused; --force replaces an earlier export and nothing else."""
    model, tok, _ = shipped_export
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(LowbitError, match="not empty"):
        export_hf(model, tok, tmp_path / "notes")
    with pytest.raises(LowbitError, match="not a lowbit MarianMT export"):
        export_hf(model, tok, tmp_path / "notes", force=True)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    export_hf(model, tok, tmp_path / "hf")
    with pytest.raises(LowbitError, match="add --force"):
        export_hf(model, tok, tmp_path / "hf")
    export_hf(model, tok, tmp_path / "hf", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "notes"]  # no temporary left
