"""Crash safety: a real kill -9 mid-run, and crashes injected between the steps of a shard sync."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dinoret.indexer import sync as sync_module
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.core.files import TMP_SUFFIX
from dinoret.indexer.meta import MetaStore
from dinoret.indexer.shards import read_index
from dinoret.indexer.vectors import list_chunks
from dinoret.retrieval.index import open_index
from tests.conftest import REPO, make_image

N_IMAGES = 40


def _check_exactly_once(idx: Path, photos: Path) -> None:
    """Every image once in the metadata, once in the shards, nothing stray on disk."""
    reader = open_index(idx)
    expected = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    records = reader.records(reader.ids())
    assert sorted(r.path for r in records) == expected
    in_shards = np.concatenate([
        faiss_ids(read_index(idx / "shards" / f)) for f in os.listdir(idx / "shards") if not f.startswith("trained")
    ])
    assert sorted(in_shards.tolist()) == sorted(reader.ids().tolist())
    assert reader.meta.tombstone_count() == 0
    committed = reader.meta.counters()["next_id"]
    assert all(first < committed for first, _ in list_chunks(idx / "vectors"))
    assert not [p for p in idx.rglob("*") if p.name.endswith(TMP_SUFFIX)]
    _, found = reader.search(reader.vectors(reader.ids()), k=1)
    assert (found[:, 0] == reader.ids()).all()


def faiss_ids(index) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.id_map)


def _cmd(photos: Path, idx: Path, weights: Path) -> list[str]:
    return [sys.executable, "-m", "dinoret", "index", str(photos), "--index", str(idx), "--weights", str(weights),
           "--device", "cpu", "--workers", "0", "--batch-size", "2", "--commit-every", "2", "-q"]


def _start(photos: Path, idx: Path, weights: Path) -> subprocess.Popen:
    return subprocess.Popen(_cmd(photos, idx, weights), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _committed(idx: Path) -> int:
    return len(list_chunks(idx / "vectors"))


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> bool:
    """kill -9 ``proc`` as soon as ``ready()``; False if it finished first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_indexes_everything_exactly_once(tmp_path, tiny_weights):
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    for i in range(N_IMAGES):
        make_image(photos / f"p{i:03d}.jpg", seed=i, size=(160, 120))
    killed = _kill_when(_start(photos, idx, tiny_weights), lambda: _committed(idx) >= 3)
    assert killed, "the run finished before it could be killed: make it longer"
    first = _committed(idx)
    assert 0 < first * 2 < N_IMAGES  # really cut mid-run
    # In between: the killed run is shown as interrupted, and its committed vectors are searchable.
    reader = open_index(idx)
    assert reader.stats()["last_run"]["status"] == "interrupted"
    _, found = reader.search(reader.vectors(reader.ids()), k=1)
    assert len(reader) > 0 and (found[:, 0] == reader.ids()).all()
    reader.close()
    # Second cut: some commits later, at whatever step the run is in.
    killed = _kill_when(_start(photos, idx, tiny_weights), lambda: _committed(idx) >= first + 4)
    assert killed
    out = subprocess.run(_cmd(photos, idx, tiny_weights), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "skipped 0" in out.stdout
    _check_exactly_once(idx, photos)


def _crash(*_a, **_k):
    raise KeyboardInterrupt("simulated crash")


@pytest.mark.parametrize("step", ["write_index", "clear_tombstones", "remove_unreferenced"])
def test_crash_inside_shard_sync_is_repaired_by_the_next_run(tmp_path, image_dir, tiny_weights, monkeypatch, step):
    idx = tmp_path / "idx"
    opts = BuildOptions(weights=str(tiny_weights), device="cpu", workers=0, progress=False)
    build_index([image_dir], idx, opts)
    (image_dir / "img04.jpg").unlink()
    make_image(image_dir / "img05.jpg", 500)  # changed
    make_image(image_dir / "added.jpg", 501)
    with monkeypatch.context() as m:
        if step == "write_index":  # the new shard file is on disk, the catalog does not know it
            real = sync_module.write_index
            m.setattr(sync_module, "write_index", lambda index, path: (real(index, path), _crash()))
        elif step == "clear_tombstones":  # catalog committed, tombstones still there
            m.setattr(MetaStore, "clear_tombstones", _crash)
        else:
            m.setattr(sync_module, "remove_unreferenced", _crash)
        with pytest.raises(KeyboardInterrupt):
            build_index([image_dir], idx, opts)
    reader = open_index(idx)  # readable in between: deleted ids never come back from search
    _, found = reader.search(reader.vectors(reader.ids()), k=len(reader) + 5)
    assert set(found[found >= 0].tolist()) <= set(reader.ids().tolist())
    reader.close()
    s = build_index([image_dir], idx, opts)
    assert s.indexed == 0  # everything was committed before the crash
    _check_exactly_once(idx, image_dir)
