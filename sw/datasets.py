"""Downloading Multi30k from its public source, every file checked against a recorded SHA-256.

The files are those of Multi30k task 1 (English-German) in the Multi30k repository,
https://github.com/multi30k/dataset, branch ``master``, folder ``data/task1/raw/``:
``SPLIT.LANG.gz`` for every split in :data:`lowbit.sw.data.SPLITS` and ``LANG`` in ``en``, ``de``.
They are laid out as they come, one flat directory of ``SPLIT.LANG.gz``, which is what
:func:`lowbit.sw.data.read_parallel` reads.

A file is written only after its checksum matched (through a hidden temporary file in the
destination folder and ``os.replace``), so the folder never holds an unverified or partial
file. A file already there with the right checksum is not downloaded again; one with a wrong
checksum is reported, and replaced only when asked (``force``).
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lowbit import LowbitError, __version__
from lowbit.io import check_build_dir, write_bytes_atomic

from .data import LANGS, SPLITS

MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"

# SHA-256 of each file of MULTI30K_URL (how they were obtained: docs/nmt.md, "Data").
MULTI30K_SHA256 = {
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
    "test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
}

_CHUNK = 1 << 16
# The largest file is 0.6 MB; a server sending this much is not serving Multi30k.
_MAX_BYTES = 64 << 20


def parse_splits(text: str) -> list[str]:
    """The splits of a comma-separated list, ``all`` for every one (see :func:`check_splits`)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    return list(SPLITS) if names == ["all"] else check_splits(names)


def check_splits(names) -> list[str]:
    """``names`` deduplicated, in the order of :data:`~lowbit.sw.data.SPLITS`; raises
    :class:`LowbitError` when it is empty or holds a name that is not a Multi30k split."""
    names = list(names)
    if not names or any(n not in SPLITS for n in names):
        raise LowbitError(f"Splits must be 'all' or a comma-separated list of {', '.join(SPLITS)}, "
                          f"not {','.join(names)!r}")
    return [s for s in SPLITS if s in names]


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_base_url(base_url: str) -> str:
    scheme = urllib.parse.urlsplit(base_url).scheme
    if scheme not in ("http", "https", "file"):
        raise LowbitError(f"--base-url must start with http://, https:// or file://, not {base_url!r}")
    return base_url if base_url.endswith("/") else base_url + "/"


def _prepare_dest(dest: Path) -> None:
    check_build_dir(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LowbitError(f"cannot create {dest}: {e.strerror or e}") from None


def _download(url: str, path: Path, expected: str, timeout: float, progress: bool) -> None:
    """Fetch ``url`` and write it to ``path`` if its SHA-256 is ``expected``; nothing appears
    otherwise. The files are small (0.6 MB at most), so the download is verified in memory
    before :func:`~lowbit.io.write_bytes_atomic` writes it."""
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"lowbit/{__version__}"})
    data, total = bytearray(), None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with tqdm(total=total, desc=path.name, unit="B", unit_scale=True, leave=False,
                      file=sys.stderr, disable=None if progress else True) as bar:
                # read1: whatever has arrived, so that the bar moves on a slow link
                while block := response.read1(_CHUNK):
                    data += block
                    bar.update(len(block))
                    if len(data) > _MAX_BYTES:
                        raise LowbitError(f"{url} is larger than {_MAX_BYTES >> 20} MiB: not a "
                                          f"Multi30k file")
    except urllib.error.HTTPError as e:
        raise LowbitError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise LowbitError(f"cannot reach {url}: {reason}") from None
    except TimeoutError:
        raise LowbitError(f"download of {url} stopped: no data for {timeout:g} s "
                          f"(after {len(data)} bytes)") from None
    except (OSError, http.client.HTTPException) as e:
        detail = e.strerror if isinstance(e, OSError) and e.strerror else repr(e)
        raise LowbitError(f"download of {url} failed after {len(data)} bytes: {detail}") from None
    if total is not None and len(data) != total:
        raise LowbitError(f"download of {url} was cut off: {len(data)} of {total} bytes arrived; "
                          f"nothing was kept, run the command again")
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise LowbitError(f"{url} has SHA-256 {actual}, not the recorded {expected}; the file was "
                          f"not kept (a changed upstream file or a bad mirror)")
    write_bytes_atomic(path, bytes(data))


def fetch_multi30k(dest: str | os.PathLike, splits=SPLITS, base_url: str = MULTI30K_URL, *,
                   force: bool = False, timeout: float = 60.0, progress: bool = True,
                   log=print) -> dict[str, list[str]]:
    """Download Multi30k task 1 English-German into ``dest``, verifying every file.

    Parameters
    ----------
    dest : path
        Destination folder; created (with its parents) if missing.
    splits : sequence of str
        Names from :data:`lowbit.sw.data.SPLITS`.
    base_url : str
        Folder URL the files ``SPLIT.LANG.gz`` are under (``http(s)://`` or ``file://``);
        :data:`MULTI30K_URL` by default, another for a mirror.
    force : bool
        Download again files that are present with a wrong checksum (otherwise an error).
    timeout : float
        Seconds to wait for a connection or for the next data.
    progress : bool
        Show a tqdm bar per file on stderr when it is a terminal.
    log : callable
        Receives one line per file.

    Returns
    -------
    dict
        ``{"downloaded": [names], "present": [names]}``.

    Raises
    ------
    LowbitError
        Bad arguments; a file present with a wrong checksum (without ``force``), checked for
        every file before anything is downloaded; an HTTP error, unreachable host, timeout,
        truncated download or checksum mismatch. Files verified before the error stay.
    """
    splits = check_splits(splits)
    if not (timeout > 0 and math.isfinite(timeout)):
        raise LowbitError(f"Timeout must be a positive number of seconds, not {timeout!r}")
    base_url = _check_base_url(base_url)
    dest = Path(dest).expanduser()
    _prepare_dest(dest)
    names = [f"{split}.{lang}.gz" for split in splits for lang in LANGS]

    # Every existing file is judged before the first download, so that a run that would stop
    # on a bad file stops before it changed anything.
    present, todo = [], []
    for name in names:
        path = dest / name
        if not path.exists():
            todo.append(name)
        elif not path.is_file():
            raise LowbitError(f"{path} exists and is not a file")
        elif (actual := sha256_of(path)) == MULTI30K_SHA256[name]:
            present.append(name)
        elif force:
            todo.append(name)
        else:
            raise LowbitError(f"{path} exists but its SHA-256 is {actual}, not the recorded "
                              f"{MULTI30K_SHA256[name]}; pass --force to download it again")
    for name in present:
        log(f"{name}: present, SHA-256 verified")
    for name in todo:
        _download(base_url + name, dest / name, MULTI30K_SHA256[name], timeout, progress)
        log(f"{name}: downloaded, SHA-256 verified")
    return {"downloaded": todo, "present": present}
