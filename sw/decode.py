"""Batched greedy and beam-search decoding, and sentence-level translation helpers.

Decoding only calls the model's own methods (``encode``, ``decode_step``, ``reorder_cache``),
which only call its modules: a model whose Linear/MatMul modules were swapped for quantized ones
decodes with them, unchanged.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
import torch

from lowbit import LowbitError


@dataclass
class DecodeOptions:
    beam: int = 1                # 1: greedy
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    max_len_a: float = 1.5       # longest output = max_len_a * source length + max_len_b
    max_len_b: int = 10
    batch_size: int = 64         # sentences per batch
    max_input_tokens: int = 256  # longer inputs are truncated (with a warning)

    def __post_init__(self):
        if not isinstance(self.beam, int) or self.beam < 1:
            raise LowbitError(f"beam size must be a positive integer, not {self.beam!r}")
        if self.batch_size < 1:
            raise LowbitError(f"batch size must be a positive integer, not {self.batch_size!r}")
        if self.max_len_a < 0 or self.max_len_b < 1:
            raise LowbitError("max length must allow at least one output token")


def pad_batch(seqs: list[list[int]], pad: int, device=None) -> torch.Tensor:
    """Right-pad id lists to a (B, L) long tensor."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def max_lengths(src: torch.Tensor, pad: int, opts: DecodeOptions, limit: int) -> list[int]:
    """Per-sentence output length limit ``a * source length + b``, truncated, in 1..``limit``.

    Computed on the host in float32 (numpy, no tensor operation: the integer-only decode's
    guard against floating-point tensor operations stays quiet), the same for every decoder.
    """
    lengths = (src != pad).sum(1).tolist()
    a, b = np.float32(opts.max_len_a), np.float32(opts.max_len_b)
    return [min(max(int(np.float32(n) * a + b), 1), limit) for n in lengths]


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, opts: DecodeOptions | None = None, *,
                  retire: bool = False) -> list[list[int]]:
    """Greedy decoding of a batch: src (B, S) -> B id lists (without the final EOS).

    A sentence ends at the step it emits EOS or a padding token, or reaches its length limit.
    With ``retire`` an ended sentence leaves the batch (its rows of the encoder output, the mask
    and the key/value cache), so later steps compute fewer rows: on simulated hardware a batch
    then runs as long as its sentences' total, not as its longest times the batch. The tokens
    are the same for every model whose rows are computed independently of each other (the
    quantized models: per-row activation scales, integer kernels; ``tests/test_cosim.py``
    checks it). Without ``retire`` the batch keeps its shape (an ended row is fed padding), as
    a float model's matmuls may round differently for another number of rows.

    The next token is the model's ``pick_token(scores)`` where it has one (the integer-only
    model: ``golden_ops.argmax`` of its integer scores), else the logits' argmax (the first
    largest, as ``golden_ops.argmax``).
    """
    opts = opts or DecodeOptions()
    pick = getattr(model, "pick_token", None) or (lambda scores: scores.argmax(-1))
    cfg = model.config
    b, device = src.shape[0], src.device
    limits = max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)
    max_len = torch.tensor(limits, dtype=torch.long, device=device)
    memory, src_mask = model.encode(src), model.src_mask(src)
    cache = model.new_cache()
    tokens = torch.full((b,), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)                  # batch row -> sentence
    live = torch.ones(b, dtype=torch.bool, device=device)   # rows still writing tokens
    out: list[list[int]] = [[] for _ in range(b)]
    for step in range(max(limits)):
        logits = model.decode_step(tokens, memory, src_mask, cache, step)      # (rows, V)
        tokens = torch.where(live, pick(logits), cfg.pad_token_id)
        stop = (tokens == cfg.eos_token_id) | (tokens == cfg.pad_token_id)
        for i, t, write in zip(alive.tolist(), tokens.tolist(), (live & ~stop).tolist()):
            if write:
                out[i].append(t)
        ended = live & (stop | (step + 1 >= max_len[alive]))
        live &= ~ended
        if not bool(live.any()):
            break
        if retire and bool(ended.any()):
            keep = live.nonzero().view(-1)
            alive, tokens, live = alive[keep], tokens[keep], live[keep]
            memory, src_mask = memory.index_select(0, keep), src_mask.index_select(0, keep)
            model.reorder_cache(cache, keep, static_too=True)
    return out


@torch.no_grad()
def beam_search(model, src: torch.Tensor, opts: DecodeOptions) -> list[list[int]]:
    """Beam search over a batch: src (B, S) -> B id lists (best hypothesis, without EOS).

    K = ``opts.beam`` hypotheses per sentence; at each step the 2K best continuations are
    ranked, those ending in EOS among the best K are finished (score / length ** length_penalty,
    length counting the EOS) and the best K others continue. A sentence is done when it has K
    finished hypotheses or reaches its maximum length (then its live beams are finished).
    """
    k = opts.beam
    cfg = model.config
    b, device = src.shape[0], src.device
    max_len = max_lengths(src, cfg.pad_token_id, opts, cfg.max_position_embeddings)
    memory, src_mask = model.encode(src), model.src_mask(src)
    rows = torch.arange(b, device=device).repeat_interleave(k)                 # (B*K,)
    memory, src_mask = memory.index_select(0, rows), src_mask.index_select(0, rows)
    cache = model.new_cache()
    tokens = torch.full((b * k,), cfg.decoder_start_token_id, dtype=torch.long, device=device)
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0                      # all beams start identical: keep one alive
    history = torch.zeros(b, k, 0, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]
    done = [False] * b
    base = (torch.arange(b, device=device) * k)[:, None]                       # (B, 1)
    for step in range(max(max_len)):
        logits = model.decode_step(tokens, memory, src_mask, cache, step)      # (B*K, V)
        logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
        vocab = logp.shape[-1]
        # scores + logp, added into logp (not needed after this): the same sums without a
        # second (B, K*V) tensor per step
        cand = logp.view(b, k, vocab).add_(scores[:, :, None]).view(b, k * vocab)  # (B, K*V)
        top_scores, top_idx = cand.topk(2 * k, dim=1)                          # (B, 2K)
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        is_eos = top_tok == cfg.eos_token_id
        # Finish EOS candidates ranked among the best K (and everything at the length limit).
        eos_rows, eos_cols = torch.nonzero(is_eos[:, :k] & torch.isfinite(top_scores[:, :k]), as_tuple=True)
        for i, j in zip(eos_rows.tolist(), eos_cols.tolist()):
            if not done[i] and len(finished[i]) < k:
                hyp = history[i, top_beam[i, j]].tolist()
                finished[i].append((top_scores[i, j].item() / (len(hyp) + 1) ** opts.length_penalty, hyp))
        # Continue with the K best non-EOS candidates.
        live = top_scores.masked_fill(is_eos, float("-inf"))
        keep_scores, keep = live.topk(k, dim=1)                                # (B, K)
        beam_of = top_beam.gather(1, keep)
        tokens_of = top_tok.gather(1, keep)
        history = torch.cat([history.gather(1, beam_of[:, :, None].expand(-1, -1, history.shape[2])),
                             tokens_of[:, :, None]], dim=2)
        scores = keep_scores
        for i in range(b):
            if done[i]:
                continue
            if step + 1 >= max_len[i]:  # out of length: the live beams are finished as they are
                for j in range(k):
                    if math.isfinite(scores[i, j].item()) and len(finished[i]) < k:
                        hyp = history[i, j].tolist()
                        finished[i].append((scores[i, j].item() / (len(hyp) + 1) ** opts.length_penalty, hyp))
            if len(finished[i]) >= k or step + 1 >= max_len[i]:
                done[i] = True
        if all(done):
            break
        scores = scores.masked_fill(torch.tensor(done, device=device)[:, None], float("-inf"))
        model.reorder_cache(cache, (base + beam_of).view(-1), static_too=False)
        tokens = tokens_of.view(-1)
    result = []
    for i in range(b):
        if finished[i]:
            result.append(max(finished[i], key=lambda s: s[0])[1])
        else:  # cannot happen (every sentence finishes at its length limit); be safe
            result.append(history[i, 0].tolist())
    return result


def decode_batch(model, src: torch.Tensor, opts: DecodeOptions) -> list[list[int]]:
    """Greedy when ``opts.beam == 1``, beam search otherwise; a model with its own ``search``
    (the integer-only model) decodes with that."""
    search = getattr(model, "search", None)
    if search is not None:
        return search(src, opts)
    return greedy_search(model, src, opts) if opts.beam == 1 else beam_search(model, src, opts)


def encode_sources(tokenizer, sentences: list[str], limit: int, warn=None) -> dict[int, list[int]]:
    """Source ids (ending in </s>) of every sentence that is not blank, by its index. Inputs
    longer than ``limit`` ids are truncated and ``warn(message)`` names the line (default: print
    to stderr)."""
    if warn is None:
        warn = lambda msg: print(f"lowbit: warning: {msg}", file=sys.stderr)  # noqa: E731
    encoded = {}
    for i, s in enumerate(sentences):
        if not s.strip():
            continue
        ids = tokenizer.encode(s, "source")
        if len(ids) > limit:
            warn(f"line {i + 1}: input of {len(ids)} tokens truncated to {limit}")
            ids = ids[:limit - 1] + [tokenizer.eos_id]
        encoded[i] = ids
    return encoded


def translate(model, tokenizer, sentences: list[str], opts: DecodeOptions | None = None,
              device=None, progress: bool = False, warn=None) -> list[str]:
    """Translate a list of sentences; the output list is aligned with the input.

    Empty (or whitespace-only) lines give empty translations without running the model. Inputs
    longer than ``opts.max_input_tokens`` (or what the model's positions allow) are truncated and
    ``warn(message)`` is called (default: print to stderr). Sentences are batched by length.
    """
    opts = opts or DecodeOptions()
    device = device or next(model.parameters()).device
    limit = min(opts.max_input_tokens, model.config.max_position_embeddings)
    encoded = encode_sources(tokenizer, sentences, limit, warn)
    out = [""] * len(sentences)
    order = sorted(encoded, key=lambda i: len(encoded[i]))
    batches = [order[j:j + opts.batch_size] for j in range(0, len(order), opts.batch_size)]
    was_training = model.training
    model.eval()
    try:
        iterator = batches
        if progress:
            from tqdm import tqdm
            iterator = tqdm(batches, desc="translating", unit="batch", file=sys.stderr)
        for batch in iterator:
            src = pad_batch([encoded[i] for i in batch], tokenizer.pad_id, device)
            for i, ids in zip(batch, decode_batch(model, src, opts)):
                out[i] = tokenizer.decode(ids, "target")
    finally:
        model.train(was_training)
    return out


def corpus_bleu(hypotheses: list[str], references: list[str]):
    """sacreBLEU corpus score (13a tokenisation, cased, detokenised text) and its signature."""
    import sacrebleu

    bleu = sacrebleu.BLEU()
    score = bleu.corpus_score(hypotheses, [references])
    return score, bleu.get_signature()
