"""Output paths, checked before the work and written atomically: the project's one place for it.

Every command that writes checks each output path *before* its work starts
(:func:`check_output_file`, :func:`check_output_dir`), so a long run is never lost at its last
step, and writes through :func:`write_text_atomic` / :func:`write_bytes_atomic` /
:func:`atomic_file` / :func:`atomic_dir`, so a reader never sees half a file and a failed write
leaves what was there before. Nothing here deletes anything it did not create, except a directory
that the caller was explicitly told to replace (``lowbit quantize --force``). Written files get
the permissions the user's umask gives (``mkstemp`` alone would leave 0600).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from lowbit import LowbitError

__all__ = ["check_output_file", "check_output_dir", "check_build_dir", "write_text_atomic",
           "write_bytes_atomic", "atomic_file", "atomic_dir"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _name(flag: str | None, path) -> str:
    return f"{flag} {path}" if flag else str(path)


def _inside(a: Path, b) -> bool:
    """``a`` is ``b`` or lies inside it."""
    try:
        b = Path(b).expanduser().resolve()
        a = a.resolve()
    except (OSError, RuntimeError):
        return False
    return a == b or b in a.parents


def _probe_folder(folder: Path, what: str) -> None:
    """Raise unless a new file can really be created in ``folder`` (permissions, read-only or
    immutable file systems and /proc all answer only to a real attempt)."""
    if not folder.exists():
        raise LowbitError(f"cannot write {what}: its folder {folder} does not exist")
    if not folder.is_dir():
        raise LowbitError(f"cannot write {what}: {folder} is not a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lowbit-probe-", dir=folder)
    except OSError as e:
        raise LowbitError(f"cannot write {what}: {folder} is not writable "
                          f"({e.strerror or e})") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path, flag: str | None = None, *, inputs: Iterable = (),
                      create_folders: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written as a file; return it as a Path.

    Refused: an existing directory, a missing or unwritable folder, and any of ``inputs``
    (the files or directories the command reads). With ``create_folders`` a missing folder is
    fine when the command creates it (its nearest existing ancestor must be writable).
    ``-`` (stdout) is not a path: callers handle it before calling this.
    """
    p = Path(path).expanduser()
    what = _name(flag, path)
    if str(path) == "":
        raise LowbitError(f"{flag or 'the output path'} must not be empty")
    for source in inputs:
        if source is not None and _inside(p, source):
            raise LowbitError(f"{what} would overwrite the input {source}")
    if p.is_dir():
        raise LowbitError(f"cannot write {what}: it is a directory")
    if p.exists() and not p.is_file():
        raise LowbitError(f"cannot write {what}: it exists and is not a regular file")
    folder = p.parent if str(p.parent) else Path(".")
    if create_folders:
        while not folder.exists():
            folder = folder.parent
    _probe_folder(folder, what)
    if p.exists() and not os.access(p, os.W_OK):
        raise LowbitError(f"cannot write {what}: the file is not writable")
    return p


def check_output_dir(path, flag: str | None = None, *, inputs: Iterable = (),
                     force: bool = False, replaceable: Callable[[Path], bool] | None = None,
                     kind: str = "output") -> Path:
    """Check, before any work, that directory ``path`` can be created; return it as a Path.

    An existing empty directory is fine. A non-empty one is refused unless ``force`` is given
    and ``replaceable(path)`` says it is something the command itself writes (e.g. a lowbit
    package), so nothing unrelated is ever replaced. ``path`` must not be, contain or lie inside
    any of ``inputs``.
    """
    p = Path(path).expanduser()
    what = _name(flag, path)
    if str(path) == "":
        raise LowbitError(f"{flag or 'the output directory'} must not be empty")
    for source in inputs:
        if source is None:
            continue
        if _inside(p, source) or _inside(Path(source).expanduser(), p):
            raise LowbitError(f"{what} would overwrite the input {source}")
    if p.exists() and not p.is_dir():
        raise LowbitError(f"cannot write {what}: it exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not force:
            hint = (" (add --force to replace it)" if replaceable is not None and replaceable(p)
                    else "")
            raise LowbitError(f"{what} already exists and is not empty{hint}")
        if replaceable is None or not replaceable(p):
            raise LowbitError(f"{what} holds files that are not a lowbit {kind}: refusing to "
                              f"replace it, even with --force")
    _probe_folder(p.parent if str(p.parent) else Path("."), what)
    return p


def check_build_dir(path, flag: str | None = None) -> Path:
    """Check a folder that tools write into (and that is created with its parents if missing):
    an existing one must be a writable directory; otherwise its nearest existing ancestor must
    be. Files already in it are left alone (tools overwrite only their own outputs)."""
    p = Path(path).expanduser()
    what = _name(flag, path)
    if p.exists() and not p.is_dir():
        raise LowbitError(f"cannot use {what}: it exists and is not a directory")
    existing = p
    while not existing.exists():
        existing = existing.parent
    _probe_folder(existing, what)
    return p


@contextlib.contextmanager
def atomic_file(path):
    """A temporary file in ``path``'s folder for writers that want a file name (``torch.save``,
    safetensors): yields its path; on success it replaces ``path`` (``os.replace``, readable like
    any file the user creates), so readers see the old file or the new one, never half of one; on
    failure it is removed and ``path`` is untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    """:func:`write_bytes_atomic` for UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path):
    """Build a directory in a temporary folder beside ``path``, then move it into place.

    Yields the temporary folder. On success an existing ``path`` (which the caller checked
    with :func:`check_output_dir` and, if not empty, was told to replace) is swapped out and
    removed; on failure the temporary folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
