"""Training: batching, schedule, a tiny real run on CPU, hooks, resuming, averaging, errors."""

import json
import random

import pytest
import torch

from lowbit import LowbitError
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import resolve_data_dir
from lowbit.sw.train import PRESETS, TrainOptions, inverse_sqrt, make_batches, resolve_config, train
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

TINY = json.dumps(dict(PRESETS["tiny"], d_model=32, ffn_dim=64, max_position_embeddings=128))


def tiny_opts(**kw):
    base = dict(epochs=2, max_tokens=600, lr=3e-3, warmup=20, vocab_size=300, eval_every=2, avg_last=2,
                limit=400, val_limit=40)
    base.update(kw)
    return TrainOptions(**base)


def test_make_batches_cover_everything_within_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(1000)]
    batches = make_batches(lengths, 500, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 500
    assert make_batches(lengths, 500, random.Random(1)) == batches  # seeded
    assert make_batches([700], 500, random.Random(0)) == [[0]]     # a too-long example still gets a batch


def test_inverse_sqrt_schedule():
    assert inverse_sqrt(1, 100) == pytest.approx(0.01)
    assert inverse_sqrt(100, 100) == 1.0
    assert inverse_sqrt(400, 100) == pytest.approx(0.5)


def test_tiny_training_run_hooks_and_resume(tmp_path):
    data = resolve_data_dir()
    calls = {"transform": 0, "steps": []}

    def transform(model):
        calls["transform"] += 1
        return model

    def after_step(model, step):
        calls["steps"].append(step)

    summary = train(data, tmp_path / "a", TINY, tiny_opts(epochs=3), device="cpu", transform_model=transform,
                    after_step=after_step, log=lambda m: None)
    assert calls["transform"] == 1
    assert calls["steps"] == list(range(1, summary["steps"] + 1)) and summary["steps"] > 10
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[-1]["val_loss"] < log[0]["val_loss"]        # it learns
    assert summary["weights"].startswith("average of epochs") or summary["weights"] == "last"
    model, tok, meta = load_model(tmp_path / "a")
    assert meta["train_summary"] == summary
    assert len(tok) == 300 and model.config.d_model == 32

    # 2 epochs, then resume to 3: the same weights as 3 epochs straight (CPU training is deterministic)
    train(data, tmp_path / "b", TINY, tiny_opts(epochs=2), device="cpu", log=lambda m: None)
    train(data, tmp_path / "b", TINY, tiny_opts(epochs=3), device="cpu", resume=True, log=lambda m: None)
    resumed, _, _ = load_model(tmp_path / "b")
    for (name, x), (_, y) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(x, y), name

    with pytest.raises(LowbitError, match="--lr was 0.003 in the saved run, now 0.001"):
        train(data, tmp_path / "b", TINY, tiny_opts(epochs=4, lr=1e-3), device="cpu", resume=True,
              log=lambda m: None)

    # --init: start from a trained model, keep its tokenizer and config
    train(data, tmp_path / "c", None, tiny_opts(epochs=1, save_dtype="float16"), init=str(tmp_path / "a"),
          device="cpu", log=lambda m: None)
    tuned, tuned_tok, _ = load_model(tmp_path / "c")
    assert tuned.config == model.config
    assert tuned_tok.vocab == tok.vocab


def test_training_errors(tmp_path):
    data = resolve_data_dir()
    with pytest.raises(LowbitError, match="cannot resume: .*train_state.pt does not exist"):
        train(data, tmp_path / "x", TINY, tiny_opts(), resume=True, device="cpu", log=lambda m: None)
    with pytest.raises(LowbitError, match="neither a preset"):
        resolve_config("huge", 8000)
    with pytest.raises(LowbitError, match="not valid JSON"):
        resolve_config("{d_model: 3}", 8000)
    with pytest.raises(LowbitError, match="--epochs must be at least 1"):
        TrainOptions(epochs=0)
    with pytest.raises(LowbitError, match="vocab_size 100 is smaller than the tokenizer's 300"):
        train(data, tmp_path / "y", json.dumps({"vocab_size": 100, "d_model": 16, "attention_heads": 2}),
              tiny_opts(), device="cpu", log=lambda m: None)
