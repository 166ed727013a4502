"""The NMT commands as a user runs them: output formats, edge cases of translate, error messages."""

import io
import json
import shutil
import sys

import pytest

from lowbit.cli import main
from lowbit.sw.checkpoint import DEFAULT_MODEL, shipped_models
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def run(argv, capsys, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_models_lists_the_default(capsys):
    status, out, _ = run(["models"], capsys)
    assert status == 0
    assert out.startswith(f"{DEFAULT_MODEL} (default)")


def test_translate_edge_cases(capsys, monkeypatch):
    long_line = " ".join(["A dog runs across the green field."] * 80)
    lines = ["A man is playing a guitar.", "", "   ", long_line, "Ein ☃ 犬 ✈ 𝄞 läuft schnell \u200b.", "Two dogs."]
    status, out, err = run(["translate", "--beam", "1", "--device", "cpu"], capsys,
                           stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    assert status == 0
    outputs = out.split("\n")
    assert outputs[-1] == "" and len(outputs) == len(lines) + 1   # one output line per input line
    assert outputs[1] == "" and outputs[2] == ""                  # empty in, empty out
    assert "Mann" in outputs[0] and "Gitarre" in outputs[0]
    assert "Hund" in outputs[5] or "Hunde" in outputs[5]
    assert "line 4: input of" in err and "truncated to 256" in err
    assert err.count("warning") == 1


def test_translate_beam_and_no_trailing_newline(capsys, monkeypatch):
    status, out, _ = run(["translate", "--max-input-tokens", "8"], capsys,
                         stdin="A girl is jumping into a swimming pool.", monkeypatch=monkeypatch)
    assert status == 0 and out.count("\n") == 1 and out.strip()


def test_translate_shows_progress_only_for_more_than_one_batch(capsys, monkeypatch):
    """Long inputs (e.g. a training set for sequence-level distillation) get a progress bar on
    stderr; a few lines, as typed or piped by hand, do not; stdout is the translations either way."""
    lines = "A man is playing a guitar.\nTwo dogs.\nA girl is jumping into a swimming pool.\n"
    status, out, err = run(["translate", "--beam", "1", "--device", "cpu", "--batch-size", "2"],
                           capsys, stdin=lines, monkeypatch=monkeypatch)
    assert status == 0 and "translating" in err and out.count("\n") == 3
    status, out2, err = run(["translate", "--beam", "1", "--device", "cpu", "--batch-size", "3"],
                            capsys, stdin=lines, monkeypatch=monkeypatch)
    assert status == 0 and "translating" not in err and out2 == out


def test_eval_prints_signature_then_score_line(capsys, tmp_path):
    status, out, _ = run(["eval", "--split", "val", "--limit", "12", "--beam", "2", "--device", "cpu",
                          "--output", str(tmp_path / "hyp.de")], capsys)
    assert status == 0
    assert len((tmp_path / "hyp.de").read_text(encoding="utf-8").splitlines()) == 12
    last, before = out.rstrip("\n").split("\n")[-1], out.rstrip("\n").split("\n")[-2]
    assert last.startswith("BLEU = ") and float(last.split()[2]) > 10
    assert before.startswith("sacreBLEU signature: nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_demo_and_bench(capsys):
    status, out, _ = run(["demo", "--limit", "20", "--beam", "2"], capsys)
    assert status == 0
    assert "EN: A dog is running through the snow." in out and "DE: " in out
    assert out.rstrip().split("\n")[-1].startswith("BLEU = ")
    status, out, _ = run(["bench", "decode", "--sentences", "6", "--beams", "1,3", "--devices", "cpu"], capsys)
    assert status == 0
    rows = [line.split() for line in out.strip().split("\n")[-2:]]
    assert rows[0][:5] == ["cpu", "1", "thread(s)", "greedy", "6"]
    assert rows[1][:6] == ["cpu", "1", "thread(s)", "beam", "3", "6"]


def test_export_hf_cli(capsys, tmp_path):
    status, out, _ = run(["export-hf", "-o", str(tmp_path / "hf")], capsys)
    assert status == 0 and "wrote" in out
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["model_type"] == "marian" and cfg["activation_function"] == "relu"
    for name in ("model.safetensors", "source.spm", "target.spm", "vocab.json"):
        assert (tmp_path / "hf" / name).is_file()


def _broken_copy(tmp_path, name):
    d = tmp_path / name
    shutil.copytree(shipped_models()[DEFAULT_MODEL], d)
    return d


@pytest.mark.parametrize("breakage,message", [
    ("no_config", "is not a model checkpoint: config.json is missing"),
    ("bad_json", "cannot read .*config.json"),
    ("bad_field", "config: unknown field\\(s\\) layers"),
    ("no_weights", "is not a model checkpoint: model.safetensors is missing"),
    ("bad_weights", "cannot read .*model.safetensors"),
    ("wrong_shape", "does not match its config.json: missing model.decoder.layers.3"),
    ("no_tokenizer", "no tokenizer in"),
])
def test_malformed_checkpoints(capsys, tmp_path, breakage, message):
    d = _broken_copy(tmp_path, breakage)
    cfg = json.loads((d / "config.json").read_text())
    if breakage == "no_config":
        (d / "config.json").unlink()
    elif breakage == "bad_json":
        (d / "config.json").write_text("{not json")
    elif breakage == "bad_field":
        (d / "config.json").write_text(json.dumps(dict(cfg, layers=3)))
    elif breakage == "no_weights":
        (d / "model.safetensors").unlink()
    elif breakage == "bad_weights":
        (d / "model.safetensors").write_bytes(b"\x00" * 100)
    elif breakage == "wrong_shape":
        (d / "config.json").write_text(json.dumps(dict(cfg, decoder_layers=4)))
    elif breakage == "no_tokenizer":
        (d / "spm.model").unlink()
    status, out, err = run(["eval", "--model", str(d), "--split", "val", "--limit", "1"], capsys)
    assert status == 2 and out == ""
    assert err.startswith("lowbit: error: ")
    assert len(err.strip().split("\n")) == 1
    import re

    assert re.search(message, err), err


@pytest.mark.parametrize("argv,message", [
    (["translate", "--model", "no-such-model"], "model 'no-such-model' is neither a shipped model"),
    (["eval", "--split", "test_2099"], "split 'test_2099' \\(en\\) not found"),
    (["eval", "--data-dir", "/nonexistent/dir"], "data directory /nonexistent/dir does not exist"),
    (["translate", "--device", "tpu"], "--device must be cpu, cuda"),
    (["bench", "decode", "--beams", "1,x"], "--beams must be comma-separated integers"),
    (["train", "--out", "/nonexistent/never", "--config", "enormous"], "--config 'enormous' is neither a preset"),
    (["import-hf", "/nonexistent/marian", "-o", "/tmp/never"], "/nonexistent/marian is not a directory"),
])
def test_cli_errors(capsys, argv, message):
    import re

    status, out, err = run(argv, capsys)
    assert status == 2
    assert re.search(message, err), err


def test_translate_rejects_bad_beam(capsys):
    with pytest.raises(SystemExit) as e:
        main(["translate", "--beam", "0"])
    assert e.value.code == 2
    assert "expected a positive integer, not '0'" in capsys.readouterr().err
