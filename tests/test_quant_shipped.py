"""The shipped packed models: listed, valid, small, and translating a held-out slice close to the
FP32 model they were retrained from, with every quantized matmul through the golden kernels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.sw.checkpoint import DEFAULT_MODEL, load_model, shipped_models
from lowbit.sw.data import read_parallel, resolve_data_dir
from lowbit.sw.decode import DecodeOptions, corpus_bleu, translate
from lowbit.sw.quant.packed import read_manifest
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

ROOT = Path(__file__).resolve().parents[1]

# scheme -> the most BLEU a 100-sentence greedy slice may lose against FP32 on the same slice
# (full-split beam-5 losses are in docs/results.md; slices are noisier than whole splits)
SHIPPED = {"int8": 1.5, "int8i": 1.5, "log4": 1.5, "mixed": 2.0, "bmt1": 3.0, "bmt1a1": 25.0}


@pytest.fixture(scope="module")
def slice_and_fp32():
    src, ref = read_parallel(resolve_data_dir(), "test_2016_flickr", limit=100)
    model, tok, _ = load_model(DEFAULT_MODEL)
    return src, ref, corpus_bleu(translate(model, tok, src, DecodeOptions(beam=1)), ref)[0].score


def test_every_scheme_is_shipped_and_valid():
    models = shipped_models()
    for scheme in SHIPPED:
        name = f"{DEFAULT_MODEL}-{scheme}"
        assert name in models, name
        manifest = read_manifest(models[name])
        assert manifest["scheme"] == scheme
        stats = manifest["stats"]
        size = sum((models[name] / f).stat().st_size for f in ("weights.bin", "manifest.json"))
        # the codes are stored at their real width (within word padding), and the blob holds
        # nothing but the manifest's tensors
        tensors = manifest["tensors"].values()
        codes = sum(t["nbytes"] for t in tensors if t["bits"] <= 8)  # scales are 16/32-bit
        assert codes <= 1.02 * stats["weight_code_bits"] / 8 + 4096
        assert (models[name] / "weights.bin").stat().st_size <= \
            sum(t["nbytes"] for t in tensors) + 64 * len(manifest["tensors"])
        meta = json.loads((models[name] / "meta.json").read_text())
        assert meta["scores"]["test_2016_flickr"]["beam5"] > 0
        assert size < 10 * 2 ** 20


def test_shipped_scores_match_the_results_records():
    """Each shipped package's meta.json scores are the latest beam-5 records under its name in
    docs/results.json (what results.md and the README show), and those records' size is the
    package's size on disk."""
    records = json.loads((ROOT / "docs" / "results.json").read_text())
    models = shipped_models()
    for scheme in SHIPPED:
        name = f"{DEFAULT_MODEL}-{scheme}"
        meta = json.loads((models[name] / "meta.json").read_text())
        size = sum((models[name] / f).stat().st_size for f in ("weights.bin", "manifest.json"))
        for split in ("test_2016_flickr", "test_2017_flickr"):
            mine = [r for r in records if r["model"] == name and r["split"] == split
                    and r["beam"] == 5]
            assert mine, (name, split)
            assert mine[-1]["bleu"] == meta["scores"][split]["beam5"], (name, split)
            assert mine[-1]["size_bytes"] == size, (name, split)


def test_mixed_precision_claims_hold_on_the_shipped_package():
    manifest = read_manifest(shipped_models()[f"{DEFAULT_MODEL}-mixed"])
    assert manifest["stats"]["bits_per_weight"] < 3.0


@pytest.mark.parametrize("scheme", list(SHIPPED))
def test_slice_bleu_close_to_fp32(scheme, slice_and_fp32):
    src, ref, fp32 = slice_and_fp32
    model, tok, meta = load_model(f"{DEFAULT_MODEL}-{scheme}")
    assert meta["scheme"] == scheme
    bleu = corpus_bleu(translate(model, tok, src, DecodeOptions(beam=1)), ref)[0].score
    assert bleu >= fp32 - SHIPPED[scheme], (scheme, bleu, fp32)
