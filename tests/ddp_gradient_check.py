"""Run under ``torchrun --nproc_per_node 2`` (gloo, CPU): one data-parallel step of two ranks,
each on its own batch, must give the gradient of one process on the union of both batches.
Exits 0 when it does (checked on every rank)."""

import sys

import torch
import torch.nn.functional as F

from lowbit.sw.distributed import context
from lowbit.sw.model import Transformer, TransformerConfig


def loss_sum(model, src, tgt_in, labels, pad):
    logits = model(src, tgt_in)
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=pad,
                           reduction="sum")


def main():
    dist = context("cpu")
    assert dist.world == 2
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1,
                            attention_heads=2, ffn_dim=64, dropout=0.0, attention_dropout=0.0,
                            max_position_embeddings=32)
    model = Transformer(cfg)
    reference = Transformer(cfg)
    reference.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    # two batches with different numbers of target tokens (padding differs)
    batches = []
    for n, length in ((3, 7), (5, 4)):
        src = torch.randint(3, 50, (n, length), generator=gen)
        labels = torch.randint(3, 50, (n, length), generator=gen)
        labels[0, -2:] = cfg.pad_token_id
        tgt_in = torch.cat([torch.zeros(n, 1, dtype=torch.long), labels[:, :-1]], dim=1)
        batches.append((src, tgt_in, labels))
    pad = cfg.pad_token_id
    net = dist.wrap(model)
    src, tgt_in, labels = batches[dist.rank]
    ntok = int((labels != pad).sum())
    loss = loss_sum(net, src, tgt_in, labels, pad)
    (loss * dist.world / dist.global_tokens(ntok, "cpu")).backward()
    total = sum(int((b[2] != pad).sum()) for b in batches)
    ref = sum(loss_sum(reference, *b, pad) for b in batches) / total
    ref.backward()
    worst = max(float((p.grad - q.grad).abs().max())
                for p, q in zip(model.parameters(), reference.parameters()))
    dist.close()
    print(f"rank {dist.rank}: largest gradient difference {worst:.3g}")
    sys.exit(0 if worst < 1e-5 else 1)


if __name__ == "__main__":
    main()
