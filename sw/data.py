"""Multi30k-style parallel text: locating the data directory and reading its splits.

A data directory holds ``SPLIT.LANG.gz`` (or plain ``SPLIT.LANG``) files, one sentence per line,
lines aligned across languages, e.g. ``train.en.gz`` / ``train.de.gz``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from lowbit import LowbitError

DATA_ENV = "LOWBIT_DATA_DIR"
# Multi30k task 1 splits (all of them: `lowbit data fetch multi30k` can download each) and the
# languages lowbit translates between.
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
LANGS = ("en", "de")
FETCH_COMMAND = "lowbit data fetch multi30k"


def user_data_dir() -> Path:
    """The per-user Multi30k directory: ``$XDG_DATA_HOME/lowbit/multi30k``, or
    ``~/.local/share/lowbit/multi30k`` when ``XDG_DATA_HOME`` is unset or not absolute (as the
    XDG base directory specification says to treat it)."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "lowbit" / "multi30k"


def default_data_dir() -> Path:
    """The data directory used when none is passed: ``$LOWBIT_DATA_DIR`` if set, else
    :func:`user_data_dir`. ``lowbit data fetch multi30k`` writes here, so that what it fetched is
    what every other command reads. The directory need not exist."""
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else user_data_dir()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory to use.

    Order: the explicit ``data_dir``; the environment variable ``LOWBIT_DATA_DIR``; the per-user
    directory (:func:`user_data_dir`). Raises :class:`LowbitError` when the chosen directory does
    not exist, naming where it came from and, for the defaults, the command that fetches the data.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise LowbitError(f"data directory {path} does not exist")
        return path
    path = default_data_dir()
    if path.is_dir():
        return path
    origin = f" (from ${DATA_ENV})" if os.environ.get(DATA_ENV) else ""
    raise LowbitError(f"data directory {path}{origin} does not exist: fetch Multi30k there with "
                      f"`{FETCH_COMMAND}`, or pass --data-dir DIR or set ${DATA_ENV}")


def split_path(data_dir: Path, split: str, lang: str) -> Path:
    """``data_dir/SPLIT.LANG.gz`` or, failing that, the uncompressed ``SPLIT.LANG``."""
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (data_dir / name).is_file():
            return data_dir / name
    available = sorted({p.name.split(".")[0] for p in data_dir.iterdir() if p.is_file()})
    raise LowbitError(f"split {split!r} ({lang}) not found in {data_dir}: no {split}.{lang}.gz or "
                      f"{split}.{lang}; splits there: {', '.join(available) or 'none'}")


def read_lines(path: Path) -> list[str]:
    """The lines of a (gzipped) UTF-8 text file without their line ends."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="\n") as f:
            return [line.rstrip("\r\n") for line in f]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise LowbitError(f"cannot read {path}: {e}") from None


def read_parallel(data_dir: Path, split: str, src_lang: str = "en", tgt_lang: str = "de",
                  limit: int | None = None) -> tuple[list[str], list[str]]:
    """Aligned (source, target) sentence lists of one split, the first ``limit`` pairs if given."""
    src = read_lines(split_path(data_dir, split, src_lang))
    tgt = read_lines(split_path(data_dir, split, tgt_lang))
    if len(src) != len(tgt):
        raise LowbitError(f"split {split!r} in {data_dir} is not aligned: {len(src)} {src_lang} lines "
                          f"but {len(tgt)} {tgt_lang} lines")
    if limit is not None:
        src, tgt = src[:limit], tgt[:limit]
    return src, tgt
