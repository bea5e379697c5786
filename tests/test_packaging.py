"""The wheel installs one top-level import package, ``dinoret``, and works from a fresh venv.

The fresh venv gets the wheel alone (``--no-deps``); torch, faiss and the other
dependencies come from this test venv's site-packages through a plain path entry, so the
editable install of the repository (a ``.pth`` finder there) is *not* active in it.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, make_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy: an in-tree build/ folder can carry stale modules into the wheel.
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "runs",
                                                             "__pycache__", ".dinoret", ".pytest_cache"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("dinoret-*.whl")
    return whl


def test_wheel_holds_only_the_dinoret_namespace_and_every_module(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"dinoret"}
    for folder, pkg in [("core", "core"), ("trainer", "trainer"), ("indexer", "indexer"),
                        ("retrieval", "retrieval"), ("webui", "webui"), ("dinoret", "")]:
        for py in (REPO / folder).rglob("*.py"):
            rel = py.relative_to(REPO / folder).as_posix()
            want = f"dinoret/{pkg}/{rel}" if pkg else f"dinoret/{rel}"
            assert want in names, f"{py} is missing from the wheel"
    assert "dinoret/webui/templates/base.html" in names
    assert "dinoret/webui/static/app.js" in names


def test_fresh_venv_runs_help_index_and_query(wheel, tmp_path, tiny_weights):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.check_output([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    # This venv's dependencies as a plain path entry: its .pth files (the editable finder) stay inactive.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-compile", "-q",
                        str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]

    work = tmp_path / "elsewhere"  # not the repository: its folders must not be importable
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["DINORET_OFFLINE"] = "1"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    probe = run(py, "-c", "import dinoret, importlib.util as u; print(dinoret.__file__); "
                          "print([m for m in ('trainer', 'indexer', 'retrieval', 'webui', 'core') if u.find_spec(m)])")
    assert probe.returncode == 0, probe.stderr
    where, clashes = probe.stdout.splitlines()
    assert str(env_dir) in where and clashes == "[]"

    dinoret = env_dir / "bin" / "dinoret"
    r = run(dinoret, "--help")
    assert r.returncode == 0 and "Examples:" in r.stdout, r.stderr

    photos = work / "photos"
    for i in range(4):
        make_image(photos / f"p{i}.jpg", seed=i)
    r = run(dinoret, "index", photos, "--index", work / "idx", "--weights", tiny_weights, "--workers", "0", "-q")
    assert r.returncode == 0, r.stderr
    r = run(dinoret, "query", photos / "p2.jpg", "--index", work / "idx", "-k", "2", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)[0]["results"]
    assert hits[0]["path"] == str(photos / "p2.jpg") and len(hits) == 2
