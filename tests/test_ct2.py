"""CTranslate2 as the peer: our spec maps every part of the model (CTranslate2's own log-probs of
given targets equal ours), the FP32 export translates exactly like `lowbit eval` (greedy and beam
5; docs/nmt.md: all of test_2016), and the export command, its int8 variant and the benchmark."""

import json
import os

import pytest
import torch

from lowbit import LowbitError
from lowbit.cli import main
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import read_lines, read_parallel, resolve_data_dir, split_path
from lowbit.sw.decode import DecodeOptions, corpus_bleu, translate
from lowbit.sw.model import Transformer, TransformerConfig
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

ctranslate2 = pytest.importorskip("ctranslate2")

from lowbit.sw.ct2 import Ct2Translator, export_ct2  # noqa: E402 (needs ctranslate2)


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("spm")
    train_sentencepiece(read_lines(split_path(resolve_data_dir(), "val", "en"))[:300], d / "spm.model", 200)
    return Tokenizer(d / "spm.model")


@pytest.mark.parametrize("fields", [
    {},                                                                   # ours: post-norm, relu, tied
    {"normalize_before": True, "activation": "swish", "scale_embedding": False},
    {"activation": "gelu", "tie_word_embeddings": False, "decoder_start_token_id": 5},
])
def test_spec_maps_every_part(small_tokenizer, tmp_path, fields):
    """Random weights everywhere (LayerNorms and the logits bias included): CTranslate2 scores
    the targets (from the start token, through </s>) with our log-probabilities."""
    tok = small_tokenizer
    torch.manual_seed(7)
    cfg = TransformerConfig(vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2,
                            attention_heads=4, ffn_dim=48, max_position_embeddings=64, **fields)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        model.final_logits_bias.normal_()
    export_ct2(model, tok, tmp_path / "ct2")
    scorer = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", intra_threads=1)
    pairs = [("A man is playing a guitar.", "Ein Mann spielt Gitarre."),
             ("Two dogs run through the tall grass near a river.", "Zwei Hunde."),
             ("Hi.", "")]
    results = scorer.score_batch([tok.sp["source"].encode(s, out_type=str) for s, _ in pairs],
                                 [tok.sp["target"].encode(t, out_type=str) for _, t in pairs])
    for (s, t), result in zip(pairs, results):
        src = torch.tensor([tok.encode(s)])
        tgt = tok.encode(t, "target")                      # target ids + </s>
        tgt_in = torch.tensor([[cfg.decoder_start_token_id] + tgt[:-1]])
        with torch.no_grad():
            logp = torch.log_softmax(model(src, tgt_in)[0], -1)
        ours = logp[torch.arange(len(tgt)), torch.tensor(tgt)]
        assert len(result.log_probs) == len(tgt)
        torch.testing.assert_close(torch.tensor(result.log_probs), ours, atol=2e-4, rtol=0)


@pytest.fixture(scope="module")
def shipped():
    model, tok, _ = load_model()
    return model, tok


@pytest.fixture(scope="module")
def fp32_export(shipped, tmp_path_factory):
    return export_ct2(*shipped, tmp_path_factory.mktemp("ct2") / "fp32")


@pytest.fixture(scope="module")
def test_2016():
    """The first 100 sentences (LOWBIT_PEER_SENTENCES=1000: the whole split, as docs/nmt.md reports)."""
    return read_parallel(resolve_data_dir(), "test_2016_flickr",
                         limit=int(os.environ.get("LOWBIT_PEER_SENTENCES", "100")))


@pytest.mark.parametrize("beam", [1, 5])
def test_ct2_translates_like_lowbit(shipped, fp32_export, test_2016, beam):
    """Line for line on test_2016 (one of the first 100 sentences runs to its length limit under
    greedy search); the vocabulary is ours, decoding starts from our start token."""
    src, _ = test_2016
    ours = translate(*shipped, src, DecodeOptions(beam=beam))
    peer = Ct2Translator(fp32_export)
    assert peer.translate(src, DecodeOptions(beam=beam)) == ours
    if beam == 1:  # one call under the longest limit, outputs cut to their own: the same
        assert peer.translate(src, DecodeOptions(beam=1), exact_limits=False) == ours
    vocabulary = json.loads((fp32_export / "shared_vocabulary.json").read_text(encoding="utf-8"))
    tok = shipped[1]
    assert vocabulary == [tok.pieces[i] for i in range(len(tok))]


def test_ct2_int8_and_edge_cases(shipped, tmp_path, test_2016):
    before = {k: v.clone() for k, v in shipped[0].state_dict().items()}
    out = export_ct2(*shipped, tmp_path / "int8", quantization="int8")
    assert (out / "model.bin").stat().st_size < 10e6   # int8 weights, the embedding stored once
    for name, t in shipped[0].state_dict().items():    # CTranslate2 quantized copies, not ours
        assert torch.equal(t, before[name]), name
    peer = Ct2Translator(out)
    src, ref = test_2016
    assert corpus_bleu(peer.translate(src[:50], DecodeOptions(beam=1)), ref[:50])[0].score > 30
    warnings = []
    hyps = peer.translate(["", "   ", "A dog. " * 60], DecodeOptions(beam=2, max_input_tokens=20),
                          warn=warnings.append)
    assert hyps[:2] == ["", ""] and hyps[2]
    assert warnings == ["line 3: input of 181 tokens truncated to 20"]


def test_export_ct2_refusals(shipped, tmp_path):
    bmt = Transformer(TransformerConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1,
                                        attention_heads=2, ffn_dim=32, bmt_norms=True))
    with pytest.raises(LowbitError, match="bmt_norms"):
        export_ct2(bmt, shipped[1], tmp_path / "bmt")
    with pytest.raises(LowbitError, match="--quantization must be one of int8, "):
        export_ct2(*shipped, tmp_path / "q", quantization="int4")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(LowbitError, match="not a lowbit CTranslate2 model"):
        export_ct2(*shipped, tmp_path / "notes", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]
    with pytest.raises(LowbitError, match="is not a CTranslate2 model"):
        Ct2Translator(tmp_path / "notes")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes(b"not a model")
    (broken / "config.json").write_text("{}")
    shipped[1].save(broken)
    with pytest.raises(LowbitError, match="cannot load the CTranslate2 model"):
        Ct2Translator(broken)


def test_export_ct2_and_bench_peer_commands(capsys, tmp_path):
    assert main(["export-ct2", "-o", str(tmp_path / "ct2"), "--quantization", "int4"]) == 2
    assert "lowbit: error: --quantization must be one of" in capsys.readouterr().err
    assert not (tmp_path / "ct2").exists()
    assert main(["export-ct2", "-o", str(tmp_path / "ct2")]) == 0
    assert main(["export-ct2", "-o", str(tmp_path / "ct2")]) == 2
    assert "add --force" in capsys.readouterr().err
    assert main(["export-ct2", "-o", str(tmp_path / "ct2"), "--quantization", "int8", "--force"]) == 0
    assert json.loads((tmp_path / "ct2" / "config.json").read_text())["decoder_start_token"] == "<pad>"
    capsys.readouterr()
    assert main(["bench", "decode", "--peer", "ctranslate2", "--sentences", "6", "--beams", "1"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().split("\n")[-6:]]
    assert [r[:4] for r in rows] == [[p, "1", "greedy", r] for p in ("FP32", "INT8")
                                     for r in ("lowbit", "ctranslate2", "ctranslate2")]
    assert rows[1][-1] == rows[2][-1] == "6/6"  # FP32: CTranslate2 gives lowbit's translations
