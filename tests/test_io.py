"""lowbit/io.py's atomic writers: a reader sees the old file or the new one, a failed write
leaves the old one and no temporary file, and written files get the umask's permissions."""

from __future__ import annotations

import os
import stat

import pytest

from lowbit.io import atomic_file, write_bytes_atomic, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_file_replaces_on_success_with_the_umask_permissions(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    old_umask = os.umask(0o027)
    try:
        with atomic_file(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_bytes(b"new")
            assert target.read_bytes() == b"old"        # not visible before the block ends
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o640                       # 0o666 & ~0o027, not mkstemp's 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


def test_atomic_file_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk gone")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    with pytest.raises(RuntimeError):                   # a new path is not created either
        with atomic_file(tmp_path / "new.bin"):
            raise RuntimeError("stop")
    assert not (tmp_path / "new.bin").exists()


def test_write_bytes_and_text(tmp_path):
    write_bytes_atomic(tmp_path / "b.bin", bytes(range(256)))
    write_text_atomic(tmp_path / "t.txt", "Straße\n")
    assert (tmp_path / "b.bin").read_bytes() == bytes(range(256))
    assert (tmp_path / "t.txt").read_bytes() == "Straße\n".encode("utf-8")


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    from lowbit.io import atomic_dir

    final = tmp_path / "build"
    final.mkdir()
    (final / "partial.o").write_bytes(b"stale")         # an interrupted earlier build
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "lib.so").write_bytes(b"half")
            raise RuntimeError("compiler died")
    assert sorted(p.name for p in final.iterdir()) == ["partial.o"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
    with atomic_dir(final) as tmp:
        (tmp / "lib.so").write_bytes(b"done")
    assert sorted(p.name for p in final.iterdir()) == ["lib.so"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build"]
