"""Whole-model co-simulation of the integer-only package: every operation on an RTL unit.

``lowbit cosim`` on ``multi30k-en-de-int8i`` runs the matmuls on the INT8 matmul unit and every
other operation of the decode (requantize, softmax, residual add, LayerNorm, embedding, argmax)
on its vector unit (sim/cosim_ops.py), each result compared with the golden operation's by
equality:

* real test sentences come out identical, with ``ops on RTL: N/N`` (every operation kind
  present, none left on the host) before the last line; with beam search the count shows the
  integer log-softmax (no vector unit yet) on the host;
* a planted fault in a vector unit (the softmax's exponential table, lowbit.hw.faults
  ``exp-entry``) is caught and reported with the operation, its layer, the decode step or
  encoder pass, and the first differing element;
* the operand mapping of each operation (per-tensor and per-channel scales, masks, several
  leading dimensions) gives the golden result on the units.
"""

from __future__ import annotations

import re

import pytest
import torch

from lowbit.cli import main
from lowbit.sw import golden, golden_ops
from lowbit.sw.quant import kernels
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.timeout(900)

MODEL = "multi30k-en-de-int8i"


def _cosim(capsys, *argv):
    status = main(["cosim", "--model", MODEL, *argv])
    return status, capsys.readouterr().out.strip().splitlines()


def test_every_operation_runs_on_rtl_and_the_tokens_are_identical(capsys):
    status, out = _cosim(capsys, "--limit", "3", "--batch-size", "3", "--jobs", "1")
    assert status == 0, out
    assert out[-1] == "identical: 3/3 sentences"
    m = re.fullmatch(r"ops on RTL: (\d+)/(\d+) \((.*)\)", out[-2])
    assert m and m.group(1) == m.group(2), out[-2]
    parts = dict(p.rsplit(" ", 1) for p in m.group(3).split(", "))
    greedy_ops = set(kernels.OPS) - {"log_softmax"}      # beam search's alone
    assert set(parts) == {"int8 matmul", *greedy_ops}, parts
    assert all("/" not in v and int(v) > 0 for v in parts.values()), parts
    assert sum(int(v) for v in parts.values()) == int(m.group(2))


def test_beam_search_counts_its_host_log_softmax(capsys):
    """Beam search's integer log-softmax has no vector unit: the count shows it on the host."""
    status, out = _cosim(capsys, "--limit", "1", "--batch-size", "1", "--jobs", "1",
                         "--beam", "2")
    assert status == 0 and out[-1] == "identical: 1/1 sentences", out
    m = re.fullmatch(r"ops on RTL: (\d+)/(\d+) \(.*log_softmax 0/(\d+).*\)", out[-2])
    assert m and int(m.group(3)) > 0, out[-2]
    assert int(m.group(2)) - int(m.group(1)) == int(m.group(3))


def test_planted_vector_unit_fault_is_caught(capsys):
    status, out = _cosim(capsys, "--limit", "2", "--batch-size", "2", "--jobs", "1",
                         "--rtl-fault", "exp-entry")
    assert status == 1
    line = next(x for x in out if x.startswith("MISMATCH"))
    assert re.match(r"MISMATCH in operation #\d+ softmax at model\.(en|de)coder\.layers\.\d+\."
                    r"\w+\.qk\.softmax \(layer (en|de)coder\.\d+, role \w+\.qk\.softmax, "
                    r"(encoder pass|decode step \d+), .*first differing element \[\d+(, \d+)*\]: "
                    r"rtl -?\d+ vs golden -?\d+", line), line
    assert out[-1].startswith("identical: 0/2")


def test_operand_mapping_of_each_operation():
    """Each substitute on tensors shaped as the model's (leading dimensions, per-tensor and
    per-channel scales, a broadcast mask) returns the golden result (it raises otherwise)."""
    from types import SimpleNamespace

    from lowbit.sim.cosim_ops import RtlOps

    config = SimpleNamespace(vocab_size=40, ffn_dim=24, d_model=12, max_position_embeddings=16)
    ops = RtlOps(config, lanes=4)
    subs = ops.kernels()
    gen = torch.Generator().manual_seed(5)

    def ints(lo, hi, *shape):
        return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64)

    try:
        acc = ints(-(1 << 20), 1 << 20, 2, 3, 12)
        for mult, shift, relu in ((torch.tensor(40000), torch.tensor(20), False),
                                  (ints(1 << 15, 1 << 16, 12), ints(14, 24, 12), True)):
            want = golden.requantize(acc, mult, shift, out_bits=8, relu=relu)
            assert torch.equal(subs["requantize"](acc, mult, shift, out_bits=8, relu=relu), want)
        z = ints(-3000, 3000, 2, 2, 3, 7)
        mask = torch.zeros(2, 1, 1, 7, dtype=torch.bool)
        mask[0, ..., 5:] = True
        mask[1] = True                      # a row whose every position is masked
        want = golden_ops.softmax(z, mask, out_bits=8)
        assert torch.equal(subs["softmax"](z, mask, out_bits=8), want)
        x, a = ints(-128, 128, 2, 3, 12), ints(-(1 << 20), 1 << 20, 2, 3, 12)
        args = (x, torch.tensor(50000), torch.tensor(16), a, ints(1 << 15, 1 << 16, 12),
                ints(18, 26, 12))
        assert torch.equal(subs["residual_add"](*args, out_bits=16),
                           golden_ops.residual_add(*args, out_bits=16))
        t = ints(-(1 << 15), 1 << 15, 2, 3, 12)
        g, b = ints(-(1 << 15), 1 << 15, 12), ints(-(1 << 30), 1 << 30, 12)
        args = (t, g, b, torch.tensor(40), torch.tensor(1000))
        assert torch.equal(subs["layernorm"](*args, in_bits=16, out_bits=8),
                           golden_ops.layernorm(*args, in_bits=16, out_bits=8))
        table, pos = ints(-128, 128, 40, 12), ints(-128, 128, 16, 12)
        mult, shift = ints(1 << 15, 1 << 16, 40), ints(14, 20, 40)
        ids = ints(0, 40, 2, 3)
        args = (ids, table, mult, shift, pos, 4)
        assert torch.equal(subs["embedding"](*args, out_bits=8),
                           golden_ops.embedding(*args, out_bits=8))
        scores = ints(-(1 << 31), 1 << 31, 3, 40)
        scores[1] = 7                       # a tie over the whole row: the lowest index
        assert torch.equal(subs["argmax"](scores), golden_ops.argmax(scores))
        assert ops.op_counts() == {op: [n, n] for op, n in
                                   (("requantize", 2), ("softmax", 1), ("residual_add", 1),
                                    ("layernorm", 1), ("embedding", 1), ("argmax", 1))}
    finally:
        ops.close()
