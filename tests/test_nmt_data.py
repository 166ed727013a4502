"""Multi30k loading, the data-directory search order and its error messages; SentencePiece."""

import gzip

import pytest

from lowbit import LowbitError
from lowbit.sw.data import (DATA_ENV, default_data_dir, read_parallel, resolve_data_dir,
                            split_path, user_data_dir)
from lowbit.sw.tokenizer import Tokenizer, train_sentencepiece
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)


def test_real_splits_are_aligned_and_sized():
    data = resolve_data_dir()
    sizes = {"train": 29000, "val": 1014, "test_2016_flickr": 1000, "test_2017_flickr": 1000}
    for split, n in sizes.items():
        en, de = read_parallel(data, split)
        assert len(en) == len(de) == n
    en, de = read_parallel(data, "val", limit=3)
    assert len(en) == 3 and en[0] and de[0] and not en[0].endswith("\n")


def test_explicit_dir_and_env_var(tmp_path, monkeypatch):
    with gzip.open(tmp_path / "val.en.gz", "wt", encoding="utf-8") as f:
        f.write("A dog.\nTwo cats.\n")
    (tmp_path / "val.de").write_text("Ein Hund.\nZwei Katzen.\n", encoding="utf-8")  # plain text works too
    assert read_parallel(resolve_data_dir(tmp_path), "val") == (["A dog.", "Two cats."], ["Ein Hund.", "Zwei Katzen."])
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(LowbitError, match=r"missing \(from \$LOWBIT_DATA_DIR\) does not exist"):
        resolve_data_dir()


def test_missing_data_errors(tmp_path, monkeypatch):
    with pytest.raises(LowbitError, match="data directory .*nowhere does not exist"):
        resolve_data_dir(tmp_path / "nowhere")
    (tmp_path / "train.en.gz").write_bytes(gzip.compress(b"x\n"))
    with pytest.raises(LowbitError, match=r"split 'test' \(en\) not found .* splits there: train"):
        split_path(tmp_path, "test", "en")
    (tmp_path / "train.de").write_text("a\nb\n")
    with pytest.raises(LowbitError, match="not aligned: 1 en lines but 2 de lines"):
        read_parallel(tmp_path, "train")
    (tmp_path / "bad.en.gz").write_bytes(b"not gzip")
    (tmp_path / "bad.de").write_text("x\n")
    with pytest.raises(LowbitError, match="cannot read .*bad.en.gz"):
        read_parallel(tmp_path, "bad")
    # no explicit dir, no env var: the per-user directory, which names the command that fills it
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(LowbitError, match=r"data directory .*xdg/lowbit/multi30k does not exist: fetch "
                                          r"Multi30k there with `lowbit data fetch multi30k`, or pass "
                                          r"--data-dir DIR or set \$LOWBIT_DATA_DIR"):
        resolve_data_dir()


def test_default_is_the_per_user_data_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for xdg in (None, "", "relative/dir"):              # unset, empty or relative: ~/.local/share
        if xdg is None:
            monkeypatch.delenv("XDG_DATA_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_DATA_HOME", xdg)
        assert user_data_dir() == tmp_path / "home" / ".local" / "share" / "lowbit" / "multi30k"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    target = tmp_path / "xdg" / "lowbit" / "multi30k"
    assert user_data_dir() == default_data_dir() == target
    target.mkdir(parents=True)
    assert resolve_data_dir() == target
    monkeypatch.setenv(DATA_ENV, str(tmp_path))         # the environment variable comes first
    assert default_data_dir() == resolve_data_dir() == tmp_path


def test_sentencepiece_is_deterministic_and_round_trips(tmp_path):
    en, de = read_parallel(resolve_data_dir(), "val")
    a = train_sentencepiece(en + de, tmp_path / "a.model", vocab_size=500)
    b = train_sentencepiece(en + de, tmp_path / "b.model", vocab_size=500)
    assert a.read_bytes() == b.read_bytes()
    tok = Tokenizer(a)
    assert (tok.pad_id, tok.unk_id, tok.eos_id, len(tok)) == (0, 1, 2, 500)
    for sentence in de[:50]:
        ids = tok.encode(sentence, "target")
        assert ids[-1] == tok.eos_id and tok.pad_id not in ids
        assert tok.decode(ids) == sentence
    # characters never seen in training map to unk instead of failing
    ids = tok.encode("Ein Hund 犬 läuft ☃.")
    assert tok.unk_id in ids
    assert "Hund" in tok.decode(ids)
