"""CPU vs GPU: the golden decode of a packed model gives the same tokens on both.

``lowbit check-devices --model PACKED --split S [--beam K] [--jobs J]`` decodes the split on the
GPU and on the CPU (in ``J`` worker processes, one thread each) and compares the token ids of every
sentence (:func:`compare_devices`; the command is :func:`lowbit.sw.quant.cli.run_check_devices`). The last line is ``identical: N/N sentences``; the exit status is 1 on any difference
(the first differing sentence is printed).

Why they agree: every integer matmul is exact (docs/numerics.md), and the host arithmetic around
it runs in float64, so the float inputs of each activation quantizer differ between devices by a
few float64 ulps at most -- far below what would move a value across a rounding boundary in
practice. Float32 host arithmetic (CPU and CUDA kernels round differently) flips roundings often
enough to change tokens.
"""

from __future__ import annotations

import time

from lowbit import LowbitError


def sentence_ids(model_spec, sentences: list[str], device: str, beam: int, batch_size: int = 64):
    """Token ids of the decode of every sentence (empty list for empty lines)."""
    import torch

    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.decode import DecodeOptions, decode_batch, pad_batch

    torch.set_num_threads(1) if device == "cpu" else None
    model, tokenizer, _ = load_model(model_spec, device)
    opts = DecodeOptions(beam=beam, batch_size=batch_size)
    limit = min(opts.max_input_tokens, model.config.max_position_embeddings)
    encoded = {}
    for i, s in enumerate(sentences):
        if s.strip():
            ids = tokenizer.encode(s, "source")
            encoded[i] = ids[:limit - 1] + [tokenizer.eos_id] if len(ids) > limit else ids
    out = [[] for _ in sentences]
    order = sorted(encoded, key=lambda i: len(encoded[i]))
    for j in range(0, len(order), batch_size):
        batch = order[j:j + batch_size]
        src = pad_batch([encoded[i] for i in batch], tokenizer.pad_id, device)
        for i, ids in zip(batch, decode_batch(model, src, opts)):
            out[i] = list(ids)
    return out


def _worker(args):
    model_spec, sentences, beam = args
    return sentence_ids(model_spec, sentences, "cpu", beam)


def compare_devices(model_spec, sentences: list[str], beam: int = 1, jobs: int = 1,
                    gpu: str = "cuda", log=print):
    """``(identical, total, first_difference)`` of CPU vs ``gpu`` decodes of ``sentences``."""
    import multiprocessing as mp

    import torch

    if not torch.cuda.is_available():
        raise LowbitError("check-devices needs a CUDA device")
    t0 = time.time()
    on_gpu = sentence_ids(model_spec, sentences, gpu, beam)
    log(f"{gpu}: {len(sentences)} sentences in {time.time() - t0:.1f} s")
    t0 = time.time()
    jobs = max(1, min(jobs, len(sentences)))
    step = (len(sentences) + jobs - 1) // jobs
    chunks = [sentences[i:i + step] for i in range(0, len(sentences), step)]
    with mp.get_context("spawn").Pool(len(chunks)) as pool:
        parts = pool.map(_worker, [(str(model_spec), c, beam) for c in chunks])
    on_cpu = [ids for part in parts for ids in part]
    log(f"cpu: {len(sentences)} sentences in {time.time() - t0:.1f} s ({len(chunks)} processes)")
    same = sum(a == b for a, b in zip(on_cpu, on_gpu))
    first = next(((i, a, b) for i, (a, b) in enumerate(zip(on_cpu, on_gpu)) if a != b), None)
    return same, len(sentences), first
