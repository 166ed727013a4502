"""The built wheel works on its own: installed (not editable) into a fresh virtual environment,
`lowbit hw verilog`, `lowbit verify` and `lowbit translate` run from a directory outside the
checkout, with the shipped models and the compiled harness's sources read from the installed
package.

The wheel is built from a copy of the tracked files (so the checkout gets no build directory);
its dependencies come from the environment running the tests (a .pth file in the new
environment points at that environment's site-packages, without its editable install of lowbit,
which a plain path entry does not activate).
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = _run(["git", "ls-files", "-z"], cwd=ROOT).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(dist), str(src)])
    wheel, = dist.glob("lowbit-*.whl")
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    env_site = _run([str(py), "-c", "import site; print(site.getsitepackages()[0])"]).stdout
    Path(env_site.strip(), "deps.pth").write_text(site.getsitepackages()[0] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
          str(wheel)])
    outside = tmp / "outside"
    outside.mkdir()
    env = dict(os.environ, PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH="")
    return env_dir, outside, env


def test_the_installed_package_is_the_wheel(installed):
    env_dir, outside, env = installed
    out = _run([str(env_dir / "bin" / "python"), "-c",
                "import sys, lowbit, lowbit.hw; print(lowbit.__file__); "
                "print('torch' in sys.modules)"], cwd=outside, env=env).stdout.split()
    assert Path(out[0]).is_relative_to(env_dir) and out[1] == "False"


def test_verilog_verify_and_translate_from_outside_the_checkout(installed):
    env_dir, outside, env = installed
    lowbit = str(env_dir / "bin" / "lowbit")
    out = _run([lowbit, "hw", "verilog", "--unit", "xnor", "--rows", "2", "--cols", "2",
                "--lint", "-o", "x.v"], cwd=outside, env=env).stdout
    assert "lint clean" in out and "module xnor_matmul" in (outside / "x.v").read_text()
    out = _run([lowbit, "verify", "--unit", "int8", "--rows", "2", "--cols", "2", "--m", "3",
                "--k", "20", "--n", "3"], cwd=outside, env=env).stdout
    assert out.splitlines()[-1] == "bit-exact: 9/9"
    proc = _run([lowbit, "translate", "--model", "multi30k-en-de-int8", "--beam", "1"],
                cwd=outside, env=env, input="A man is riding a bike.\nTwo dogs play.\n")
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(lines)
    # the same translations as the checkout's own package
    here = _run([sys.executable, "-m", "lowbit", "translate", "--model", "multi30k-en-de-int8",
                 "--beam", "1"], cwd=ROOT, input="A man is riding a bike.\nTwo dogs play.\n")
    assert here.stdout == proc.stdout
