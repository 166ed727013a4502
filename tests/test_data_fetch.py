"""`lowbit data fetch multi30k`: downloads from a loopback HTTP server (never the network) holding
the real Multi30k files, tampered ones and a connection cut mid-file; the default data location;
`lowbit demo` without data."""

import functools
import gzip
import hashlib
import http.server
import shutil
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.sw.data import DATA_ENV, LANGS, SPLITS, resolve_data_dir
from lowbit.sw.datasets import MULTI30K_SHA256
from nmt_fixtures import one_torch_thread  # noqa: F401 (autouse fixture)

# The splits in the data directory the tests read (the two others are not there).
LOCAL_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; files named in ``server.cut`` are announced whole and sent half."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path.lstrip("/"))
        name = self.path.lstrip("/")
        if name in self.server.cut:
            data = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextmanager
def serve(directory, cut=()):
    """``(base URL, list of requested names)`` of a server on 127.0.0.1 for ``directory``."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.requests, server.cut = [], set(cut)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # the loopback server must be reached directly even where a proxy is configured
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def run(argv, capsys):
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def one_error_line(status, err):
    """The error message of a failed command: exit status 2 and one `lowbit: error:` line."""
    assert status == 2
    lines = err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("lowbit: error: "), err
    return lines[0]


def listing(folder):
    return sorted(p.name for p in Path(folder).iterdir())


def test_checksum_table_names_every_split_and_matches_the_local_data():
    assert set(MULTI30K_SHA256) == {f"{s}.{lang}.gz" for s in SPLITS for lang in LANGS}
    data = resolve_data_dir()
    for split in LOCAL_SPLITS:
        for lang in LANGS:
            name = f"{split}.{lang}.gz"
            assert hashlib.sha256((data / name).read_bytes()).hexdigest() == MULTI30K_SHA256[name]


def test_fetch_from_a_mirror_gives_the_same_data_and_bleu(tmp_path, capsys):
    source, dest = resolve_data_dir(), tmp_path / "new" / "multi30k"   # parents are created
    with serve(source) as (url, requests):
        status, out, _ = run(["data", "fetch", "multi30k", "--base-url", url, "--dest", str(dest),
                              "--splits", ",".join(LOCAL_SPLITS)], capsys)
        assert status == 0
        assert "8 files verified (8 downloaded, 0 already present)" in out
        assert listing(dest) == sorted(f"{s}.{lang}.gz" for s in LOCAL_SPLITS for lang in LANGS)
        for name in listing(dest):
            assert (dest / name).read_bytes() == (source / name).read_bytes()
        # a second run checks what is there and downloads nothing
        n = len(requests)
        status, out, _ = run(["data", "fetch", "multi30k", "--base-url", url.rstrip("/"),
                              "--dest", str(dest), "--splits", "val,train"], capsys)
        assert status == 0 and len(requests) == n
        assert "4 files verified (0 downloaded, 4 already present)" in out
    results = []
    for data_dir in (source, dest):
        hyp = tmp_path / f"hyp-{len(results)}.de"
        status, out, _ = run(["eval", "--data-dir", str(data_dir), "--split", "test_2016_flickr",
                              "--limit", "100", "--beam", "1", "--device", "cpu",
                              "--output", str(hyp)], capsys)
        assert status == 0
        results.append((out.strip().split("\n")[-1], hyp.read_text(encoding="utf-8")))
    assert results[0][0].startswith("BLEU = ") and results[0] == results[1]


def test_wrong_checksum_and_cut_connection_leave_no_file(tmp_path, capsys):
    served, dest = tmp_path / "served", tmp_path / "dest"
    served.mkdir()
    source = resolve_data_dir()
    for name in ("val.de.gz", "test_2016_flickr.en.gz", "test_2016_flickr.de.gz"):
        shutil.copy(source / name, served / name)
    # a well-formed file with other content: only the checksum tells it apart
    real = gzip.decompress((source / "val.en.gz").read_bytes()).decode("utf-8").split("\n")
    (served / "val.en.gz").write_bytes(gzip.compress("\n".join(real[:-2] + ["A cat.", ""]).encode()))
    with serve(served, cut={"test_2016_flickr.en.gz"}) as (url, requests):
        status, _, err = run(["data", "fetch", "multi30k", "--base-url", url, "--dest", str(dest),
                              "--splits", "val"], capsys)
        line = one_error_line(status, err)
        assert f"{url}val.en.gz has SHA-256" in line
        assert f"not the recorded {MULTI30K_SHA256['val.en.gz']}" in line and "not kept" in line
        assert listing(dest) == []
        status, _, err = run(["data", "fetch", "multi30k", "--base-url", url, "--dest", str(dest),
                              "--splits", "test_2016_flickr"], capsys)
        line = one_error_line(status, err)
        size = (source / "test_2016_flickr.en.gz").stat().st_size
        assert f"test_2016_flickr.en.gz was cut off: {size // 2} of {size} bytes arrived" in line
        assert listing(dest) == []
        assert requests == ["val.en.gz", "test_2016_flickr.en.gz"]   # each stopped at the first file


def test_present_files_are_verified_and_a_bad_one_is_replaced_only_with_force(tmp_path, capsys):
    dest = tmp_path / "dest"
    fetch = ["data", "fetch", "multi30k", "--dest", str(dest), "--splits", "val"]
    with serve(resolve_data_dir()) as (url, requests):
        assert run(fetch + ["--base-url", url], capsys)[0] == 0
        assert requests == ["val.en.gz", "val.de.gz"]
        (dest / "val.de.gz").write_bytes(b"edited by hand")
        status, _, err = run(fetch + ["--base-url", url], capsys)
        line = one_error_line(status, err)
        assert str(dest / "val.de.gz") in line and "pass --force" in line
        assert (dest / "val.de.gz").read_bytes() == b"edited by hand"
        assert len(requests) == 2                       # judged before any download
        status, out, _ = run(fetch + ["--base-url", url, "--force"], capsys)
        assert status == 0 and requests[2:] == ["val.de.gz"]
        assert "2 files verified (1 downloaded, 1 already present)" in out
    assert hashlib.sha256((dest / "val.de.gz").read_bytes()).hexdigest() == MULTI30K_SHA256["val.de.gz"]


def test_http_error_unreachable_host_and_timeout(tmp_path, capsys):
    dest = tmp_path / "dest"
    fetch = ["data", "fetch", "multi30k", "--dest", str(dest)]
    with serve(resolve_data_dir()) as (url, _):
        # the default is every split; the local folder lacks two of them
        status, _, err = run(fetch + ["--base-url", url], capsys)
        assert f"cannot download {url}test_2017_mscoco.en.gz: HTTP 404" in one_error_line(status, err)
    assert listing(dest) == [f"{s}.{lang}.gz" for s in sorted(LOCAL_SPLITS) for lang in ("de", "en")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                       # closed again: nothing listens there
    status, _, err = run(fetch + ["--base-url", f"http://127.0.0.1:{port}/", "--splits", "test_2018_flickr"],
                         capsys)
    assert f"cannot reach http://127.0.0.1:{port}/test_2018_flickr.en.gz: " in one_error_line(status, err)
    with socket.socket() as s:                          # accepts connections, never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        status, _, err = run(fetch + ["--base-url", f"http://127.0.0.1:{s.getsockname()[1]}/",
                                      "--splits", "test_2018_flickr", "--timeout", "0.5"], capsys)
    assert "test_2018_flickr.en.gz stopped: no data for 0.5 s" in one_error_line(status, err)
    assert not any(name.startswith("test_2018") or name.startswith(".") for name in listing(dest))


@pytest.mark.parametrize("args, message", [
    (["--splits", "val,dev"], "Splits must be 'all' or a comma-separated list of train, val, "
                              "test_2016_flickr, test_2017_flickr, test_2017_mscoco, test_2018_flickr, "
                              "not 'val,dev'"),
    (["--splits", ","], "Splits must be 'all'"),
    (["--base-url", "mirror.example.org/multi30k"], "--base-url must start with http://, https:// or "
                                                    "file://, not 'mirror.example.org/multi30k'"),
    (["--timeout", "0"], "Timeout must be a positive number of seconds, not 0.0"),
    (["--timeout", "inf"], "Timeout must be a positive number of seconds, not inf"),
    (["--dest", "FILE"], "FILE: it exists and is not a directory"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    args = [str(tmp_path / a) if a == "FILE" else a for a in args]
    dest = [] if "--dest" in args else ["--dest", str(tmp_path / "d")]
    status, _, err = run(["data", "fetch", "multi30k", *dest, *args], capsys)
    assert message in one_error_line(status, err)
    assert not (tmp_path / "d").exists()


def test_file_urls_and_the_default_destination(tmp_path, capsys, monkeypatch):
    source = resolve_data_dir()
    # without --dest the files go where the other commands look when not told
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    status, out, _ = run(["data", "fetch", "multi30k", "--splits", "val", "--base-url", source.as_uri()],
                         capsys)
    assert status == 0
    target = tmp_path / "xdg" / "lowbit" / "multi30k"
    assert listing(target) == ["val.de.gz", "val.en.gz"]
    assert resolve_data_dir() == target and "use it with" not in out
    # with $LOWBIT_DATA_DIR set, that is where they go (and where they are read from)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert run(["data", "fetch", "multi30k", "--splits", "val", "--base-url", source.as_uri()],
               capsys)[0] == 0
    assert listing(tmp_path / "env") == ["val.de.gz", "val.en.gz"]


def test_demo_without_data_translates_and_names_the_fetch_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    status, out, _ = run(["demo", "--packed", ""], capsys)
    assert status == 0
    assert "EN: A dog is running through the snow." in out and "DE: " in out
    lines = out.strip().split("\n")
    assert lines[-2] == (f"no Multi30k data in {tmp_path / 'xdg' / 'lowbit' / 'multi30k'}; for the "
                         f"BLEU score on test_2016_flickr, fetch it with:")
    assert lines[-1] == "  lowbit data fetch multi30k"
    assert not (tmp_path / "xdg").exists()
    # a --data-dir that does not exist is still an error, found before any translation
    status, out, err = run(["demo", "--packed", "", "--data-dir", str(tmp_path / "none")], capsys)
    assert "data directory" in one_error_line(status, err) and out == ""
