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
SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
_DEFAULT_REL = Path("..") / "shared" / "data" / "multi30k"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory to use.

    Order: the explicit ``data_dir``; the environment variable ``LOWBIT_DATA_DIR``;
    ``../shared/data/multi30k`` relative to the repository root, then to the working directory,
    when it exists. Raises :class:`LowbitError` naming what was tried when none exists.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise LowbitError(f"data directory {path} does not exist")
        return path
    env = os.environ.get(DATA_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise LowbitError(f"data directory {path} (from ${DATA_ENV}) does not exist")
        return path
    repo_root = Path(__file__).resolve().parents[1]
    tried = []
    for base in (repo_root, Path.cwd()):
        path = (base / _DEFAULT_REL).resolve()
        if path.is_dir():
            return path
        tried.append(str(path))
    raise LowbitError(f"no Multi30k data found: pass --data-dir DIR or set ${DATA_ENV} "
                      f"(looked in {', '.join(tried)})")


def split_path(data_dir: Path, split: str, lang: str) -> Path:
    """``data_dir/SPLIT.LANG.gz`` or, failing that, the uncompressed ``SPLIT.LANG``."""
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (data_dir / name).is_file():
            return data_dir / name
    available = sorted({p.name.split(".")[0] for p in data_dir.iterdir() if p.is_file()})
    raise LowbitError(f"split {split!r} ({lang}) not found in {data_dir}: no {split}.{lang}.gz or "
                      f"{split}.{lang}; splits there: {', '.join(available) or 'none'}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
