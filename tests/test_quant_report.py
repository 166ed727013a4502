"""lowbit report: target verdicts on both test splits, and docs/results.md in sync with its records."""

from __future__ import annotations

from pathlib import Path

from lowbit.sw.quant.report import SPLITS, build_rows, check_targets, render, write_report

ROOT = Path(__file__).resolve().parents[1]


def _rec(model, scheme, b16, b17, *, size, bits, retrained=True):
    out = []
    for split, bleu in zip(SPLITS, (b16, b17)):
        out.append({"model": model, "scheme": scheme, "retrained": retrained, "split": split,
                    "beam": 5, "bleu": bleu, "size_bytes": size, "bits_per_weight": bits,
                    "integer_matmuls": 67, "matmuls": 67, "device": "cpu",
                    "date": "2026-01-01 00:00 UTC"})
    return out


def test_targets_are_judged_on_each_split():
    records = (_rec("fp", "fp32", 40.0, 33.0, size=3000, bits=32.0, retrained=False)
               + _rec("a", "int8", 39.81, 32.80, size=750, bits=8.0)      # 99.53%, 99.39%
               + _rec("b", "log4", 39.70, 32.71, size=400, bits=4.0)      # -0.30, -0.29
               + _rec("c", "mixed", 39.40, 32.60, size=250, bits=2.9)     # -0.60, -0.40
               + _rec("d", "bmt1", 38.0, 31.0, size=900, bits=9.4)        # -2.0, -2.0
               + _rec("e", "bmt1a1", 35.0, 27.9, size=90, bits=1.1))      # -5.0, -5.1
    lines = check_targets(build_rows(records, 5))
    text = "\n".join(lines)
    assert "- **partly met**: INT8 (all matmuls) >= 99.5% of FP32 BLEU: 2016: 99.5% (met); " \
           "2017: 99.4% (not met)" in text
    assert "- met: log 4-bit loses <= 0.3 BLEU: 2016: loses 0.30 (met); 2017: loses 0.29 (met)" \
        in text
    assert "- met: mixed < 3 bits per weight: 2.90" in text
    assert "- met: mixed >= 11.8x smaller than FP32: 12.0x" in text
    assert "- **partly met**: mixed loses <= 0.5 BLEU: 2016: loses 0.60 (not met); " \
           "2017: loses 0.40 (met)" in text
    assert "- **not met**: BMT 1-bit weights lose <= 1.0 BLEU" in text
    assert "- **partly met**: BMT 1-bit weights and activations lose <= 5.0 BLEU: 2016: loses " \
           "5.00 (met); 2017: loses 5.10 (not met)" in text


def test_fp32_control_is_no_reference_and_shipped_packages_are_judged():
    """An FP32 control (the float model trained further: retrained, scheme fp32) gets its own row
    but the targets stay measured against the FP32 reference; among several retrained runs of a
    scheme the shipped package (named after the shipped model) is the one judged."""
    records = (_rec("fp32-control", "fp32", 40.6, 33.5, size=3000, bits=32.0)
               + _rec("multi30k-en-de", "fp32", 40.0, 33.0, size=3000, bits=32.0, retrained=False)
               + _rec("log4-other", "log4", 35.0, 30.0, size=400, bits=4.0)
               + _rec("multi30k-en-de-log4", "log4", 39.8, 32.9, size=400, bits=4.0)
               + _rec("zz-log4-other", "log4", 35.0, 30.0, size=400, bits=4.0))
    rows = build_rows(records, 5)
    text = "\n".join(check_targets(rows))
    assert "- met: log 4-bit loses <= 0.3 BLEU: 2016: loses 0.20 (met); 2017: loses 0.10 (met)" \
        in text
    table = render(rows, 5)
    assert "| fp32-control | fp32 | FP32, longer | 40.60 | 33.50 | +0.60 | 101.5% |" in table
    assert "| multi30k-en-de | fp32 | no | 40.00 | 33.00 | +0.00 | 100.0% |" in table


def test_results_md_names_every_fp32_control(tmp_path):
    """The note under the table names each FP32 control, in the singular or the plural."""
    import json
    ref = _rec("multi30k-en-de", "fp32", 40.0, 33.0, size=3000, bits=32.0, retrained=False)
    for controls, phrase in ((["c-16m"], "The FP32 control (c-16m) is that FP32 model"),
                             (["c-16m", "c-lr5e-5"],
                              "The FP32 controls (c-16m, c-lr5e-5) are that FP32 model")):
        records = ref + [r for c in controls
                         for r in _rec(c, "fp32", 39.9, 32.5, size=3000, bits=32.0)]
        path = tmp_path / "results.json"
        path.write_text(json.dumps(records))
        text = write_report(path, tmp_path).read_text()
        assert phrase in text
        assert all(f"| {c} | fp32 | FP32, longer |" in text for c in controls)


def test_no_fp32_row_no_verdicts():
    assert check_targets(build_rows(_rec("a", "int8", 39.0, 32.0, size=1, bits=8.0), 5)) == [
        "(no FP32 result: targets not evaluated)"]


def test_shipped_results_md_matches_its_records(tmp_path):
    """docs/results.md's quality section is what `lowbit report` makes of docs/results.json."""
    from lowbit.hw.fpga_render import report_section

    out = write_report(ROOT / "docs" / "results.json", tmp_path,
                       sections=[report_section(ROOT / "docs")], bench_dir=ROOT / "bench")
    assert out.read_text() == (ROOT / "docs" / "results.md").read_text()
    assert (tmp_path / "results_quality_bits.png").stat().st_size > 1000
