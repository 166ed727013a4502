"""Whole-model co-simulation (``lowbit cosim``, sim/cosim.py): packed models decoded with every
quantized matmul run on the Verilated unit of its scheme and compared with the golden kernel.

* the batched beats co-simulation streams (one packer, :mod:`lowbit.hw.packing`, with its weight
  cache) are the driver's payloads of each matmul, word for word (no Verilator);
* a few real test sentences per scheme (INT8, log4, binary-coding mixed, BMT 1-bit weights and
  1-bit weights + activations) come out identical, inline and with two jobs;
* a planted arithmetic fault in the RTL (lowbit.hw.faults ``drop-lsb``) is caught and reported
  with the first mismatching matmul and element, and the unit really computes what the fault
  says (golden minus the number of odd products);
* bad arguments exit with status 2 and one clear line.

Models: the shipped packed models (``lowbit models``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.hw.driver import Protocol
from lowbit.sim.operands import random_operands
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[1]
# scheme -> shipped packed model
MODELS = {
    "int8": "multi30k-en-de-int8",
    "log4": "multi30k-en-de-log4",
    "mixed": "multi30k-en-de-mixed",
    "bmt1": "multi30k-en-de-bmt1",
    "bmt1a1": "multi30k-en-de-bmt1a1",
}


def packed_model(scheme: str) -> str:
    """The shipped packed model of ``scheme`` (fails clearly if the package is missing)."""
    shipped = MODELS[scheme]
    if not (ROOT / "lowbit" / "models" / shipped).is_dir():
        pytest.fail(f"no packed {scheme} model: lowbit/models/{shipped} is missing")
    return shipped


def _cosim(capsys, *argv) -> tuple[int, list[str]]:
    status = main(["cosim", *argv])
    out = capsys.readouterr().out.strip().splitlines()
    return status, out


# ---------------------------------------------------------------------------------------------
# Beats of batched matmuls = the driver's payloads


class _Cached:
    """Weights of a known shape that must come from the packer's cache, never be packed."""

    def __init__(self, w):
        self.shape = w.shape

    def __call__(self):
        raise AssertionError("constant weights packed a second time")


def _ints(words: np.ndarray) -> list[int]:
    return [int.from_bytes(row.astype("<u4").tobytes(), "little") for row in words]


@pytest.mark.parametrize("unit,params", [
    ("int8", dict(rows=3, cols=2, a_bits=5, w_bits=7, max_k=64)),
    ("log", dict(rows=2, cols=3, bits=3, max_k=64)),
    ("xnor", dict(rows=2, cols=3, a_planes=3, w_planes=2, lanes=20, max_k=200)),
])
def test_batched_beats_equal_driver_payloads(unit, params):
    """A batch of matmuls (own weights per element, or shared weights packed once and then
    taken from the packer's weight cache) streamed as one, as co-simulation streams them: the
    beats are those of the driver's plans of the elements, one after the other, in raw mode;
    small chunks make several harness calls, as for a large batch."""
    from lowbit.hw.packing import Matmul, Packer

    protocol = Protocol.for_unit(unit, **params)
    hw = protocol.description
    packer = Packer(hw, weight_cache=True)
    rng = np.random.default_rng(11)
    m, k, n = 5, 37, 7
    ops = [random_operands(hw, rng, m, k, n, raw=True) for _ in range(3)]
    bias, zeros = ops[0]["bias"], np.zeros(n, np.int64)
    extra = {name: ops[0][name] for name in hw.extra_operands}
    shared = ops[0]["w"][None]
    if extra:       # packed planes: one matmul per call
        a, weights = ops[0]["a"][None], [shared, _Cached(shared)]
    else:
        a = np.stack([o["a"] for o in ops])
        weights = [np.stack([o["w"] for o in ops]), shared, _Cached(shared)]
    for i, w in enumerate(weights):
        mm = Matmul(hw.operands(a, w, extra), bias, zeros, zeros, raw=True)
        job = packer.job(mm, w_key=("w", None) if len(w.shape) and w.shape[0] == 1 else None)
        w = shared if isinstance(w, _Cached) else w
        cfg, x = [], []
        for _, _, c, xb in packer.blocks(job, chunk_beats=40):
            cfg += _ints(c)
            x += _ints(xb)
        plans = [protocol.plan(a[b], w[b % len(w)], bias, raw=True, **extra)
                 for b in range(len(a))]
        assert cfg == [t.cfg for p in plans for t in p.tiles], i
        assert x == [beat for p in plans for t in p.tiles for beat in t.x], i


# ---------------------------------------------------------------------------------------------
# Real models, real sentences


@pytest.mark.parametrize("scheme", list(MODELS))
def test_cosim_identical(scheme, capsys):
    status, out = _cosim(capsys, "--model", packed_model(scheme), "--limit", "2",
                         "--batch-size", "2", "--jobs", "1")
    assert out[-1] == "identical: 2/2 sentences", "\n".join(out)
    assert status == 0
    assert any(line.startswith("simulated ") and "array utilisation" in line for line in out)


def test_cosim_two_jobs(capsys, tmp_path):
    """Two worker processes share the batches; the translations are written in order."""
    hyp = tmp_path / "hyp.de"
    status, out = _cosim(capsys, "--model", packed_model("int8"), "--limit", "3",
                         "--batch-size", "1", "--jobs", "2", "--output", str(hyp))
    assert out[-1] == "identical: 3/3 sentences", "\n".join(out)
    assert status == 0
    lines = hyp.read_text().splitlines()
    assert len(lines) == 3 and all(lines)


@pytest.mark.parametrize("model_name", [MODELS["mixed"], "multi30k-en-de-int8i"])
def test_retiring_greedy_equals_greedy_search(model_name):
    """Co-simulation drops finished sentences from the batch; the tokens are greedy_search's
    (golden kernels, 48 real sentences in batches sorted by length, as cosim makes them), for a
    fake-quantized model and for the integer-only one (whose greedy picks golden_ops.argmax)."""
    from lowbit.sim.cosim import encode_sentences, make_batches
    from lowbit.sw.checkpoint import load_model
    from lowbit.sw.data import read_parallel, resolve_data_dir
    from lowbit.sw.decode import DecodeOptions, decode_batch, greedy_search, pad_batch

    model, tok, _ = load_model(model_name)
    src, _ = read_parallel(resolve_data_dir(None), "test_2016_flickr", limit=48)
    encoded = encode_sentences(tok, src, 256, print)
    opts = DecodeOptions(beam=1, batch_size=16)
    checked = 0
    for batch in make_batches(encoded, 16):
        ids = pad_batch([encoded[i] for i in batch], tok.pad_id)
        assert greedy_search(model, ids, opts, retire=True) == decode_batch(model, ids, opts)
        checked += len(batch)
    assert checked == 48


# ---------------------------------------------------------------------------------------------
# A planted mismatch


def test_planted_rtl_fault_is_caught(capsys):
    """Every unit built with the drop-lsb fault: the first matmul of the encoder differs, and
    cosim names it with its layer, shapes and first differing element, then exits 1."""
    status, out = _cosim(capsys, "--model", packed_model("int8"), "--limit", "2",
                         "--batch-size", "2", "--jobs", "1", "--rtl-fault", "drop-lsb")
    assert status == 1
    assert out[-1] == "identical: 0/2 sentences"
    (line,) = [x for x in out if x.startswith("MISMATCH")]
    assert ("MISMATCH in matmul #1 int_matmul at model.encoder.layers.0.self_attn.q_proj "
            "(layer encoder.0, role self_attn.q_proj, shapes [") in line
    assert "first differing element [0, 0]:" in line
    rtl, gold = (int(v) for v in
                 line.split("first differing element [0, 0]: rtl ")[1].split(" (")[0]
                 .split(" vs golden "))
    # Each product loses at most 1 (p & ~1), so the RTL sum is at most K = 256 below.
    assert 0 < gold - rtl <= 256


def test_fault_variant_computes_what_it_says():
    """The drop-lsb unit's raw sums are the golden sums minus the count of odd products: the
    fault is the arithmetic error it is named after, and nothing else."""
    from lowbit.sim.harness import VerilatedUnit

    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (9, 40))
    w = rng.integers(-128, 128, (11, 40))
    bias = rng.integers(-1000, 1000, 11)
    with VerilatedUnit("int8", rows=8, cols=8, max_k=32768, a_bits=8, w_bits=8,
                       fault="drop-lsb") as unit:
        got = unit.matmul(a, w, bias, raw=True).y
    odd = ((a[:, None, :] * w[None, :, :]) % 2 != 0).sum(-1)
    assert np.array_equal(got, a @ w.T + bias - odd)
    assert odd.sum() > 0


def test_planted_output_bit_flip_is_caught(capsys):
    """The host-side hook: one flipped bit in the RTL's first output beat of matmul 3."""
    status, out = _cosim(capsys, "--model", packed_model("int8"), "--limit", "1",
                         "--jobs", "1", "--plant-mismatch", "3")
    assert status == 1
    (line,) = [x for x in out if x.startswith("MISMATCH")]
    assert "MISMATCH in matmul #3 " in line and "first differing element [0, 0]:" in line
    assert "(1 of " in line


# ---------------------------------------------------------------------------------------------
# Bad arguments


@pytest.mark.parametrize("argv,message", [
    (["--model", "multi30k-en-de"], "multi30k-en-de is not a packed model"),
    (["--model", "MODEL", "--jobs", "0"], "--jobs must be an integer in 1..256, not 0"),
    (["--model", "MODEL", "--limit", "0"], "--limit must be a positive integer, not 0"),
    (["--model", "MODEL", "--rows", "0"], "--rows must be an integer in 1..64, not 0"),
    (["--model", "MODEL", "--split", "nosuchsplit"], "nosuchsplit"),
    (["--model", "MODEL", "--rtl-fault", "bogus"], "--rtl-fault must be one of drop-lsb"),
    (["--model", "/nonexistent/model"], "/nonexistent/model"),
])
def test_cosim_bad_arguments(argv, message, capsys):
    argv = [packed_model("int8") if a == "MODEL" else a for a in argv]
    assert main(["cosim", *argv, "--limit" if "--limit" not in argv else "--jobs",
                 "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error: ") and message in err[0], err


def test_bench_cosim_bad_arguments(capsys):
    assert main(["bench", "cosim", "--model", packed_model("int8"), "--sentences", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "lowbit: error: --sentences must be a positive integer, not 0"
