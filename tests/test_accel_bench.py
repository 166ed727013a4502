"""``lowbit bench accel``: the integer-only accelerator's cycles from co-simulation.

Two real sentences through every RTL unit (checked), then the table's arithmetic: the shares add
up, serial cycles are compute plus weight traffic, overlapped the larger of the two, sentences/s
follow from the clock; the JSON and the plot are written; bad invocations are one-line errors.
"""

from __future__ import annotations

import json

import pytest

from lowbit.cli import main
from lowbit.sim.accel_bench import fpga_fmax, weight_bytes
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.timeout(900)


def test_bench_accel_table_and_json(tmp_path, capsys):
    out_json, out_png = tmp_path / "accel.json", tmp_path / "accel.png"
    status = main(["bench", "accel", "--sentences", "2", "--batch-size", "2", "--fmax", "50",
                   "--mem-bytes-per-cycle", "4", "--json", str(out_json), "--plot",
                   str(out_png)])
    out = capsys.readouterr().out.splitlines()
    assert status == 0
    assert out[-1] == "identical: 2/2 sentences"
    assert out[-2].startswith("ops on RTL: ") and "int8 matmul" in out[-2]
    s = json.loads(out_json.read_text())
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compute, memory = s["compute_cycles"], s["memory_cycles"]
    assert compute == sum(s["cycles"].values()) > 0
    assert set(s["cycles"]) == {"int8 matmul", "requantize", "softmax", "residual_add",
                                "layernorm", "embedding", "argmax"}
    assert memory == pytest.approx(s["memory_bytes"] / 4)
    n, tokens = s["sentences"], s["tokens"]
    assert n == 2 and tokens > n
    assert s["cycles_per_token"]["serial"] == pytest.approx((compute + memory) / tokens)
    assert s["cycles_per_token"]["overlapped"] == pytest.approx(max(compute, memory) / tokens)
    assert s["accel_sentences_per_second"]["serial"] == pytest.approx(
        n * 50e6 / (compute + memory))
    assert set(s["cpu_sentences_per_second"]) == {"multi30k-en-de", "multi30k-en-de-int8",
                                                  "multi30k-en-de-int8i"}
    # the decode steps are one argmax each; the weights of every step were counted
    assert s["decode_steps"] == s["ops"]["argmax"][1] > 0
    rows = [line for line in out if line.split() and line.split()[0] in
            ("layernorm", "softmax", "argmax", "embedding", "requantize", "residual_add")]
    shares = sum(float(r.split()[2].rstrip("%")) for r in rows)
    matmul = next(float(line.split()[3].rstrip("%")) for line in out
                  if line.startswith("int8 matmul"))
    memory_row = next(line for line in out if line.startswith("weight traffic"))
    assert shares + matmul + float(memory_row.split()[4].rstrip("%")) == pytest.approx(100,
                                                                                        abs=0.5)


def test_weight_bytes_and_fmax_lookup(tmp_path):
    from lowbit.sw.checkpoint import load_model

    model, _, _ = load_model("multi30k-en-de-int8i")
    enc, dec = weight_bytes(model)
    d, f, v = model.config.d_model, model.config.ffn_dim, model.config.vocab_size
    per_layer = 4 * d * d + 2 * d * f + (4 * d + d + f) * 9     # int8 weights + 9 B/channel
    assert enc == model.config.encoder_layers * per_layer
    dec_layer = 8 * d * d + 2 * d * f + (8 * d + d + f) * 9
    assert dec == model.config.decoder_layers * dec_layer + v * d + v * 9
    records = {"records": {"a": {"config": {"board": "b", "unit": "int8", "rows": 4, "cols": 4},
                                 "result": {"fmax_mhz": 70.5}},
                           "c": {"config": {"board": "b", "unit": "int8", "rows": 4, "cols": 4},
                                 "result": {"fmax_mhz": 80.25}},
                           "d": {"config": {"board": "b", "unit": "int8", "rows": 2, "cols": 4},
                                 "result": {"fmax_mhz": 99.0}}}}
    path = tmp_path / "fpga.json"
    path.write_text(json.dumps(records))
    assert fpga_fmax("b", "int8", 4, 4, path) == 80.25
    assert fpga_fmax("b", "log", 4, 4, path) is None
    assert fpga_fmax("b", "int8", 4, 4, tmp_path / "missing.json") is None


@pytest.mark.parametrize("argv, message", [
    (["--model", "multi30k-en-de-int8", "--fmax", "50"], "is not an integer-only package"),
    (["--fmax", "0"], "--fmax must be a positive number"),
    (["--fmax", "nan"], "--fmax must be a positive number"),
    (["--mem-bytes-per-cycle", "-1"], "--mem-bytes-per-cycle must be a positive number"),
    (["--sentences", "0"], "--sentences must be an integer in 1..1000"),
    (["--rows", "3", "--cols", "5", "--board", "icebreaker"], "bench/fpga.json has no Fmax"),
    (["--fmax", "50", "--json", "/proc/x/y.json"], "--json"),
])
def test_bad_invocations(argv, message, capsys):
    assert main(["bench", "accel", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lowbit: error:") and message in err[0], err
