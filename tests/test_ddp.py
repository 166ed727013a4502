"""Training under torchrun with DistributedDataParallel, on the CPU with gloo and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
DATA = os.environ.get("LOWBIT_DATA_DIR") or str(HERE.parents[0].parent / "shared" / "data" /
                                                "multi30k")


def _torchrun(args, tmp_path, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", LOWBIT_DATA_DIR=DATA)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", *args], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=timeout)


def test_two_ranks_step_like_one_process_on_both_batches(tmp_path):
    proc = _torchrun([str(HERE / "ddp_gradient_check.py")], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("largest gradient difference") == 2


@pytest.mark.slow
def test_lowbit_train_under_torchrun_writes_one_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"

    def train(epochs, *extra):
        return _torchrun(["-m", "lowbit", "train", "--out", str(out), "--config", "tiny",
                          "--limit", "300", "--val-limit", "20", "--vocab-size", "300",
                          "--epochs", str(epochs), "--eval-every", "2", "--avg-last", "1",
                          "--device", "cpu", *extra], tmp_path)

    proc = train(2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data parallel: 2 ranks (gloo)" in proc.stdout
    assert proc.stdout.count("done: ") == 1                 # rank 0 alone finishes and writes
    meta = json.loads((out / "meta.json").read_text())
    assert meta["trained_with"]["ranks"] == 2
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    proc = train(3, "--resume")     # one more epoch, from the saved state on both ranks
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed after epoch 2" in proc.stdout
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert log[2]["step"] > log[1]["step"]
