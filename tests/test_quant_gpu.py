"""CPU vs CUDA: the golden decode of every shipped packed model gives identical tokens.

Runs where a CUDA device exists (marked ``gpu``). ``LOWBIT_GPU_SENTENCES`` sets how many
test_2016_flickr sentences are compared per model (default 50; the whole split is 1000).
"""

from __future__ import annotations

import os

import pytest
import torch

from lowbit.sw.checkpoint import shipped_models
from lowbit.sw.quant.packed import is_packed

PACKED = sorted(name for name, path in shipped_models().items() if is_packed(path))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", PACKED)
def test_cpu_and_gpu_decode_identically(name):
    from lowbit.sw.data import read_parallel, resolve_data_dir
    from lowbit.sw.quant.consistency import compare_devices

    n = int(os.environ.get("LOWBIT_GPU_SENTENCES", "50"))
    src, _ = read_parallel(resolve_data_dir(), "test_2016_flickr", limit=n)
    same, total, first = compare_devices(name, src, beam=1, jobs=min(4, os.cpu_count() or 1))
    assert same == total, f"first difference: {first}"
