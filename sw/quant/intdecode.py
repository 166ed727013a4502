"""Greedy and beam search on integer scores (the integer-only model's :meth:`search`).

Greedy decoding is :func:`lowbit.sw.decode.greedy_search` itself (the next token is the model's
``pick_token``: ``golden_ops.argmax`` of the integer scores, ties to the lowest id); the beam
search here mirrors :func:`~lowbit.sw.decode.beam_search` step for step, with the float
arithmetic replaced (docs/numerics.md, "Output scores and search"):

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

import torch

from lowbit import LowbitError
from lowbit.sw import golden_ops as gops
from lowbit.sw.decode import greedy_search, max_lengths

from . import kernels

DEAD = -(1 << 62)          # score of a hypothesis that does not exist (float decode: -inf)
ALIVE_ABOVE = -(1 << 61)   # real scores stay far above: 512 steps * 2**34 < 2**43


def _top(scores: torch.Tensor, k: int):
    """The ``k`` largest scores of each row and their indices; ties: lower index first."""
    values, index = torch.sort(scores, dim=1, descending=True, stable=True)
    return values[:, :k], index[:, :k]


LOGP_BITS = 33             # a log-probability is above -2**33: -d - l with d < 2**32, l < 2**20


def _best_candidates(z: torch.Tensor, scores: torch.Tensor, n: int, steps: int):
    """The ``n`` best continuations of each sentence: ``(scores, indices)`` [B, n], indices
    ``beam * V + token``, ranked by score, ties by the lower index (dead beams: ``DEAD``).

    ``z`` [B*K, V] are the step's integer scores, ``scores`` [B, K] the hypotheses' and
    ``steps`` the most log-probabilities a score sums. Through :func:`kernels.call_op`, the
    golden ``log_softmax`` and a stable sort of every row; while that is the golden operation
    (:func:`kernels.fast`) the same integers and ranking come cheaper:
    ``golden_ops.log_softmax_terms`` with the sparse row sum, the candidates
    ``(score - l) - d`` (= ``score + log_softmax``: exact int64, far from overflow), and one
    ``topk`` of keys that order them as the stable sort does (:func:`_top_candidates`).
    """
    b, k = scores.shape
    vocab = z.shape[-1]
    if not kernels.fast("log_softmax"):
        logp = kernels.call_op("log_softmax", "lm_head.log_softmax", z, check=False)
        cand = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)
        return _top(cand.clamp(min=DEAD), n)  # dead beams stay dead (and tie among themselves)
    d, lse = gops.log_softmax_terms(z, sparse=True)
    cand = d.view(b, k, vocab).neg_().add_((scores - lse.view(b, k))[:, :, None])
    return _top_candidates(cand.view(b, k * vocab), n, steps)


def _top_candidates(cand: torch.Tensor, n: int, steps: int):
    """:func:`_top` of ``cand.clamp(min=DEAD)``, with one ``topk`` instead of a sort.

    Every candidate is a real score above ``-steps * 2**LOGP_BITS`` (a sum of at most ``steps``
    log-probabilities) or at most ``DEAD`` (a dead beam's). The key
    ``max(cand, floor) * 2**b + (2**b - 1 - index)``, with ``floor`` below every real score and
    ``2**b`` above every index, is unique per row and orders the candidates exactly as the
    stable sort does (score descending, ties by the lower index, the dead ones tied at
    ``floor``), so its ``n`` largest are :func:`_top`'s. The scores are read back from ``cand``.
    Falls back to the sort where a key would not fit int64.
    """
    width = cand.shape[1]
    b = max(width - 1, 1).bit_length()
    floor = -(steps << LOGP_BITS) - 1
    if (-floor) << b >= 1 << 62:
        return _top(cand.clamp(min=DEAD), n)
    key = cand.clamp(min=floor).mul_(1 << b).add_(torch.arange(
        (1 << b) - 1, (1 << b) - 1 - width, -1, dtype=torch.int64, device=cand.device))
    index = key.topk(n, dim=1).indices
    return cand.gather(1, index).clamp_(min=DEAD), index


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
        vocab = z.shape[-1]
        top_scores, top_idx = _best_candidates(z, scores, 2 * k, max(max_len))  # (B, 2K)
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
    """Greedy when ``opts.beam == 1`` (:func:`lowbit.sw.decode.greedy_search`, which picks each
    token with the model's ``pick_token``: ``golden_ops.argmax``), beam search otherwise."""
    if opts.beam == 1:
        return greedy_search(model, src, opts)
    return beam_search(model, src, opts)
