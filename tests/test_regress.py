"""`lowbit regress`: a 2x2 matrix on a local Ray instance (2 CPUs), a worker killed mid-cell,
resumption after an interruption, and config errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.regress import cell_key, load_config, run_cell

DATA = os.environ.get("LOWBIT_DATA_DIR") or str(
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "multi30k")

CONFIG = """[regress]
packages = ["multi30k-en-de-int8", "multi30k-en-de-mixed"]
splits = ["test_2016_flickr", "test_2017_flickr"]
checks = ["bleu"]
limit = 3
beam = 1
data_dir = "{data}"
output = "out/regress.json"
"""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """The 2x2 matrix, run once with the first cell's worker killed on its first attempt."""
    root = tmp_path_factory.mktemp("regress")
    (root / "out").mkdir()
    cfg = root / "cfg.toml"
    cfg.write_text(CONFIG.format(data=DATA))
    marker = root / "crashed"
    status = main(["regress", str(cfg), "--cpus", "2", "--crash-once", str(marker)])
    return root, cfg, marker, status


def test_matrix_runs_end_to_end_despite_a_killed_worker(matrix):
    root, cfg, marker, status = matrix
    assert status == 0
    assert marker.exists()                  # the first attempt really died
    cells = json.loads((root / "out" / "regress.json").read_text())["cells"]
    assert len(cells) == 4 and all(c["status"] == "pass" for c in cells.values())
    table = (root / "out" / "regress.md").read_text()
    assert table.count("| multi30k-en-de-") == 4
    # the retried cell's result is what the cell gives when nothing dies
    first = load_config(cfg).cells()[0]
    again = run_cell(first, DATA)
    assert again["bleu"] == cells[cell_key(first)]["bleu"]


def test_rerun_skips_finished_cells_and_resumes_missing_ones(matrix, capsys):
    root, cfg, _, _ = matrix
    path = root / "out" / "regress.json"
    data = json.loads(path.read_text())
    key = sorted(data["cells"])[-1]
    kept = data["cells"][key]
    del data["cells"][key]                  # as if interrupted before the last cell finished
    path.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["regress", str(cfg), "--cpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "3/4 cells already done" in out and out.count(": pass") == 1
    assert json.loads(path.read_text())["cells"][key]["bleu"] == kept["bleu"]
    capsys.readouterr()
    assert main(["regress", str(cfg), "--cpus", "2"]) == 0      # all done: no Ray at all
    assert "4/4 cells already done" in capsys.readouterr().out


def test_cosim_cell_is_bit_exact():
    cell = {"package": "multi30k-en-de-int8", "split": "test_2016_flickr", "check": "cosim",
            "limit": 2, "beam": 1}
    result = run_cell(cell, DATA)
    assert result["status"] == "pass" and result["identical"] == 2 and result["cycles"] > 0


@pytest.mark.parametrize("body,message", [
    ("", "needs a [regress] table"),
    ("[regress]\npackages = []\n", "packages must be a non-empty list"),
    ("[regress]\npackages = ['a']\nchecks = ['speed']\n", "unknown check(s) speed"),
    ("[regress]\npackages = ['a']\nlimit = 0\n", "limit must be a positive integer"),
    ("[regress]\npackages = ['a']\nbogus = 1\n", "unknown key(s) bogus"),
    ("[regress]\npackages = ['a']\noutput = 'x.txt'\n", "output must be a .json"),
    ("[regress\n", "cannot read config"),
])
def test_config_errors(tmp_path, capsys, body, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(body)
    assert main(["regress", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: ") and message in err and len(err.splitlines()) == 1


def test_cosim_on_ray_survives_a_killed_worker_with_the_same_report(tmp_path):
    """`lowbit cosim --ray`: the worker of the first batch dies once; the batch is retried and
    the report (identity, simulated cycles, calls) equals a run in this process."""
    from lowbit.sim.cosim import CosimOptions, cosim_split
    from lowbit.sw.checkpoint import resolve_model_dir
    from lowbit.sw.data import read_parallel

    src, _ = read_parallel(Path(DATA), "test_2016_flickr", limit=4)
    model = str(resolve_model_dir("multi30k-en-de-int8"))
    marker = tmp_path / "crashed"
    on_ray = cosim_split(model, src, CosimOptions(jobs=2, batch_size=2, ray="",
                                                  crash_once=str(marker)),
                         log=lambda m: None)
    inline = cosim_split(model, src, CosimOptions(jobs=1, batch_size=2), log=lambda m: None)
    assert marker.exists()
    assert on_ray.ok and on_ray.identical == inline.identical == 4
    assert on_ray.translations == inline.translations
    assert on_ray.cycles == inline.cycles
    assert [(u.unit, u.calls, u.macs) for u in on_ray.units] == \
        [(u.unit, u.calls, u.macs) for u in inline.units]


def test_fpga_builds_on_ray_give_the_record_of_a_local_build(tmp_path):
    """`lowbit bench fpga --ray`: a build as a Ray task; the driver writes the record."""
    from lowbit.hw.fpga_bench import _config, base_params, load_results, run_bench

    config = _config("icebreaker", "log", (1, 1), dict(base_params("log"), bits=1), "requant")
    results = tmp_path / "fpga.json"
    data = run_bench([config], results_path=results, build_root=str(tmp_path / "b"), jobs=1,
                     ray_address="")
    record = load_results(results)["records"][config.key]
    assert record == json.loads(json.dumps(data["records"][config.key]))
    assert record["fits"] is True
    assert record["result"]["lut"] > 0 and record["result"]["fmax_mhz"] > 0
