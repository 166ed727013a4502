"""Word-level knowledge distillation (`lowbit train --distill`): the loss, a tiny real run on CPU
in which the distilled student stays closer to its teacher than a student trained on the labels
alone, and the errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from lowbit import LowbitError
from lowbit.sw.checkpoint import load_model
from lowbit.sw.data import read_parallel, resolve_data_dir
from lowbit.sw.decode import pad_batch
from lowbit.sw.train import PRESETS, TrainOptions, _distill_loss, train
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

TINY = json.dumps(dict(PRESETS["tiny"], d_model=32, ffn_dim=64, max_position_embeddings=128))
QUIET = dict(device="cpu", log=lambda m: None)


def opts(**kw):
    base = dict(epochs=2, max_tokens=600, lr=3e-3, warmup=20, vocab_size=300, eval_every=100,
                avg_last=1, limit=400, val_limit=40)
    base.update(kw)
    return TrainOptions(**base)


class _Fixed(torch.nn.Module):
    """A 'teacher' that returns given logits."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, src, tgt_in):
        return self.logits


def test_distill_loss_is_soft_target_cross_entropy_without_padding():
    g = torch.Generator().manual_seed(3)
    t_logits, s_logits = torch.randn(2, 4, 7, generator=g), torch.randn(2, 4, 7, generator=g)
    labels = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])   # pad = 0
    src = torch.zeros(2, 3, dtype=torch.long)
    got = _distill_loss(_Fixed(t_logits), src, labels, labels, s_logits, pad=0, amp=False)
    keep = labels != 0
    want = F.cross_entropy(s_logits[keep], F.softmax(t_logits[keep], -1), reduction="sum")
    assert torch.allclose(got, want, rtol=1e-6)
    # the teacher's own logits give its entropy, the minimum over students
    self_ce = _distill_loss(_Fixed(t_logits), src, labels, labels, t_logits, pad=0, amp=False)
    assert self_ce < got


def _kl_to_teacher(student, teacher, tok, data) -> float:
    """Mean KL(teacher || student) per target token, teacher-forced on validation pairs."""
    src_txt, tgt_txt = read_parallel(data, "val", limit=40)
    pad, start = teacher.config.pad_token_id, teacher.config.decoder_start_token_id
    src = pad_batch([tok.encode(s, "source") for s in src_txt], pad)
    tgt = pad_batch([tok.encode(t, "target") for t in tgt_txt], pad)
    tgt_in = torch.cat([torch.full((len(tgt), 1), start), tgt[:, :-1]], 1)
    with torch.no_grad():
        lt = F.log_softmax(teacher(src, tgt_in), -1)
        ls = F.log_softmax(student(src, tgt_in), -1)
    kl = (lt.exp() * (lt - ls)).sum(-1)
    return float(kl[tgt != pad].mean())


def test_distilled_student_stays_closer_to_its_teacher(tmp_path):
    data = resolve_data_dir()
    train(data, tmp_path / "teacher", TINY, opts(epochs=3), **QUIET)
    teacher, tok, _ = load_model(tmp_path / "teacher")
    # two students continue from the teacher at a high learning rate: one on the labels only, one
    # with the teacher's distribution as the whole target (weight 1)
    run = dict(init=str(tmp_path / "teacher"), **QUIET)
    train(data, tmp_path / "plain", None, opts(lr=1e-2, seed=2), **run)
    train(data, tmp_path / "kd", None, opts(lr=1e-2, seed=2, distill=str(tmp_path / "teacher"),
                                            distill_weight=1.0), **run)
    plain = _kl_to_teacher(load_model(tmp_path / "plain")[0], teacher, tok, data)
    kd = _kl_to_teacher(load_model(tmp_path / "kd")[0], teacher, tok, data)
    assert kd < 0.7 * plain, (kd, plain)
    meta = json.loads((tmp_path / "kd" / "meta.json").read_text())
    assert meta["trained_with"]["options"]["distill"] == str(tmp_path / "teacher")


def test_distill_errors(tmp_path):
    data = resolve_data_dir()
    with pytest.raises(LowbitError, match=r"--distill-weight must be in \(0, 1\], not 1.5"):
        TrainOptions(distill="x", distill_weight=1.5)
    train(data, tmp_path / "t", TINY, opts(epochs=1, vocab_size=250), **QUIET)
    with pytest.raises(LowbitError, match="the teacher's vocabulary differs from the student's"):
        train(data, tmp_path / "s", TINY, opts(epochs=1, distill=str(tmp_path / "t")), **QUIET)
