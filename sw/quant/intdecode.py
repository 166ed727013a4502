"""Greedy and beam search on integer scores (the integer-only model's :meth:`search`).

They mirror :func:`lowbit.sw.decode.greedy_search` and :func:`~lowbit.sw.decode.beam_search`
step for step, with the float arithmetic replaced (docs/numerics.md, "Output scores and search"):

* greedy: the next token is ``golden_ops.argmax`` of the integer scores (ties: lowest id);
* beam search: ``golden_ops.log_softmax`` gives integer log-probabilities (log2 domain,
  2**-16 units, <= 0); a hypothesis' score is their exact int64 sum; candidates are ranked by
  score, ties by the lower candidate index (beam-major: ``beam * V + token``), a stable sort;
  finished hypotheses are compared by ``score / length`` (length penalty 1) as exact fractions
  (``s1 * l2`` against ``s2 * l1``), or by ``score`` (length penalty 0), the first finished
  winning a tie.

What stays on the host, in Python integers: the beam's bookkeeping (which hypotheses finished,
their token lists, the per-sentence length limits) -- control, not arithmetic on the data path.
The length limit ``floor(a * source length + b)`` is computed in float32 exactly as the float
decode computes it, so both stop at the same step.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from lowbit import LowbitError
from lowbit.sw import golden_ops as gops

DEAD = -(1 << 62)          # score of a hypothesis that does not exist (float decode: -inf)
ALIVE_ABOVE = -(1 << 61)   # real scores stay far above: 512 steps * 2**34 < 2**43


def max_lengths(src: torch.Tensor, pad: int, opts, limit: int) -> list[int]:
    """Per-sentence output length limit, ``a * source length + b`` truncated, in 1..limit
    (float32 like :func:`lowbit.sw.decode._max_lengths`, on the host)."""
    lengths = (src != pad).sum(1).tolist()
    a, b = np.float32(opts.max_len_a), np.float32(opts.max_len_b)
    return [min(max(int(np.float32(n) * a + b), 1), limit) for n in lengths]


def _top(scores: torch.Tensor, k: int):
    """The ``k`` largest scores of each row and their indices; ties: lower index first."""
    values, index = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


def _strip(row: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for t in row:
        if t in (eos, pad):
            break
        out.append(t)
    return out


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, opts) -> list[list[int]]:
    """Greedy decoding on integer scores: src (B, S) -> B id lists (without the final EOS)."""
    cfg = model.config
    b, device = src.shape[0], src.device
    max_len = max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)
    limit = torch.tensor(max_len, dtype=torch.int64, device=device)
    memory, src_mask = model.encode(src), model.src_mask(src)
    cache = model.new_cache()
    tokens = torch.full((b,), cfg.decoder_start_token_id, dtype=torch.int64, device=device)
    out = torch.full((b, max(max_len)), cfg.pad_token_id, dtype=torch.int64, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for step in range(max(max_len)):
        scores = model.decode_step(tokens, memory, src_mask, cache, step)     # (B, V)
        tokens = gops.argmax(scores, check=False)
        tokens = torch.where(done, torch.full_like(tokens, cfg.pad_token_id), tokens)
        out[:, step] = tokens
        done |= (tokens == cfg.eos_token_id) | (limit <= step + 1)
        if bool(done.all()):
            break
    return [_strip(row, cfg.eos_token_id, cfg.pad_token_id) for row in out.tolist()]


def _normalized(score: int, length: int, penalty: float):
    return Fraction(score, length) if penalty == 1.0 else Fraction(score)


@torch.no_grad()
def beam_search(model, src: torch.Tensor, opts) -> list[list[int]]:
    """Beam search on integer log-probabilities: src (B, S) -> B id lists (best hypothesis)."""
    if opts.length_penalty not in (0.0, 1.0):
        raise LowbitError(f"integer-only beam search normalizes by length ** 0 or ** 1; "
                          f"--length-penalty must be 0 or 1, not {opts.length_penalty}")
    k = opts.beam
    cfg = model.config
    b, device = src.shape[0], src.device
    max_len = max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)
    memory, src_mask = model.encode(src), model.src_mask(src)
    rows = torch.arange(b, device=device).repeat_interleave(k)                 # (B*K,)
    memory, src_mask = memory.index_select(0, rows), src_mask.index_select(0, rows)
    cache = model.new_cache()
    tokens = torch.full((b * k,), cfg.decoder_start_token_id, dtype=torch.int64, device=device)
    scores = torch.full((b, k), DEAD, dtype=torch.int64, device=device)
    scores[:, 0] = 0                         # all beams start identical: keep one alive
    history = torch.zeros(b, k, 0, dtype=torch.int64, device=device)
    finished: list[list[tuple]] = [[] for _ in range(b)]   # (normalized score, ids)
    done = [False] * b
    base = (torch.arange(b, device=device) * k)[:, None]                       # (B, 1)
    for step in range(max(max_len)):
        z = model.decode_step(tokens, memory, src_mask, cache, step)           # (B*K, V)
        logp = gops.log_softmax(z, check=False)
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)
        cand = cand.clamp(min=DEAD)          # dead beams stay dead (and tie among themselves)
        top_scores, top_idx = _top(cand, 2 * k)                                # (B, 2K)
        top_beam = torch.div(top_idx, vocab, rounding_mode="floor")
        top_tok = top_idx - top_beam * vocab
        is_eos = top_tok == cfg.eos_token_id
        # Finish EOS candidates ranked among the best K (and everything at the length limit).
        eos_rows, eos_cols = torch.nonzero(is_eos[:, :k] & (top_scores[:, :k] > ALIVE_ABOVE),
                                           as_tuple=True)
        for i, j in zip(eos_rows.tolist(), eos_cols.tolist()):
            if not done[i] and len(finished[i]) < k:
                hyp = history[i, top_beam[i, j]].tolist()
                finished[i].append((_normalized(int(top_scores[i, j]), len(hyp) + 1,
                                                opts.length_penalty), hyp))
        # Continue with the K best non-EOS candidates.
        live = torch.where(is_eos, torch.full_like(top_scores, DEAD), top_scores)
        keep_scores, keep = _top(live, k)                                      # (B, K)
        beam_of = top_beam.gather(1, keep)
        tokens_of = top_tok.gather(1, keep)
        history = torch.cat([history.gather(1, beam_of[:, :, None].expand(-1, -1, history.shape[2])),
                             tokens_of[:, :, None]], dim=2)
        scores = keep_scores
        alive = (scores > ALIVE_ABOVE).tolist()
        for i in range(b):
            if done[i]:
                continue
            if step + 1 >= max_len[i]:  # out of length: the live beams are finished as they are
                for j in range(k):
                    if alive[i][j] and len(finished[i]) < k:
                        hyp = history[i, j].tolist()
                        finished[i].append((_normalized(int(scores[i, j]), len(hyp) + 1,
                                                        opts.length_penalty), hyp))
            if len(finished[i]) >= k or step + 1 >= max_len[i]:
                done[i] = True
        if all(done):
            break
        dead_rows = torch.tensor(done, device=device)[:, None]
        scores = torch.where(dead_rows, torch.full_like(scores, DEAD), scores)
        model.reorder_cache(cache, (base + beam_of).view(-1), static_too=False)
        tokens = tokens_of.view(-1)
    result = []
    for i in range(b):
        if finished[i]:
            best = finished[i][0]
            for item in finished[i][1:]:     # strictly better replaces: the first wins a tie
                if item[0] > best[0]:
                    best = item
            result.append(best[1])
        else:  # cannot happen (every sentence finishes at its length limit); be safe
            result.append(history[i, 0].tolist())
    return result


def decode_batch(model, src: torch.Tensor, opts) -> list[list[int]]:
    """Greedy when ``opts.beam == 1``, beam search otherwise."""
    return greedy_search(model, src, opts) if opts.beam == 1 else beam_search(model, src, opts)
