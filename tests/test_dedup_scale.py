"""Dedup as it reads a large index: hashes and vectors of every image in compact arrays, the
other record fields only for grouped rows, LMDB pages handed back, vectors read as stored."""
from __future__ import annotations

import numpy as np
import pytest

from dinoret.indexer.catalog import open_catalog
from dinoret.indexer.commit import commit_vectors, create_info
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.retrieval import dedup as dedup_module
from dinoret.retrieval.dedup import find_duplicates
from dinoret.retrieval.index import open_index

DIM = 32
N = 400


def _vectors() -> np.ndarray:
    """N random unit vectors; rows 400.. are appended by the caller as copies."""
    x = np.random.default_rng(0).standard_normal((N, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _index(root, records_and_vectors) -> IndexPaths:
    paths = IndexPaths.of(root)
    paths.root.mkdir(parents=True)
    engine = open_catalog(paths.catalog, create=True)
    create_info(engine, {"model": "synthetic", "weights_sha256": "-", "dim": DIM, "backbone_config": {},
                         "preprocess": {}}, "", 10_000)
    engine.dispose()
    commit_vectors(paths, records_and_vectors, 10_000, commit_every=150)  # several vector chunks
    return paths


@pytest.fixture
def planted(tmp_path):
    """Rows 0..399 unrelated; 400 a near copy of 10 (smaller), 401 a near copy of 20 (larger),
    402 the same bytes as 30, 403 the same pixels as 40 (another format)."""
    x = _vectors()
    rng = np.random.default_rng(1)
    near = x[[10, 20]] + 0.05 * rng.standard_normal((2, DIM)).astype(np.float32)
    x = np.concatenate([x, near / np.linalg.norm(near, axis=1, keepdims=True), x[[30, 40]]])

    def record(i: int) -> Record:
        content = {402: f"{30:032x}"}.get(i, f"{i:032x}")
        pixels = {403: f"p{40:031x}"}.get(i, f"p{i:031x}")
        side = {400: 50, 401: 400}.get(i, 100)
        return Record(-1, f"/photos/{i:04d}.jpg", 1000, 0.0, content, pixels, side, side, -1)

    paths = _index(tmp_path / "idx", ((record(i), v.astype(np.float16) * np.float16(1.3)) for i, v in enumerate(x)))
    return paths, x


def _groups(result) -> list[list[str]]:
    return [[m.path.rsplit("/", 1)[1] for m in g.members] for g in result.groups]


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_groups_from_stored_vectors_and_hashes(planted, method):
    paths, _ = planted
    result = find_duplicates(open_index(paths.root), threshold=0.95, device="cpu", method=method, nprobe=64)
    assert sorted(_groups(result)) == [["0010.jpg", "0400.jpg"], ["0030.jpg", "0402.jpg"], ["0040.jpg", "0403.jpg"],
                                       ["0401.jpg", "0020.jpg"]]
    reasons = {g.members[0].path.rsplit("/", 1)[1]: [m.reason for m in g.members] for g in result.groups}
    assert reasons["0030.jpg"] == ["exact", "exact"] and reasons["0010.jpg"] == ["near", "near"]
    assert result.stats["exact_copies"] == 2 and result.stats["images"] == N + 4
    assert result.params["method"] == method


def test_an_image_deleted_during_the_run_leaves_no_stale_group(planted, monkeypatch):
    """A record removed (a concurrent index run) after the first read: its group, left with one
    image, is dropped; the other groups are reported as usual."""
    paths, _ = planted
    load = dedup_module._IndexRows.load

    def load_after_a_deletion(self, rows):
        if not getattr(self, "_deleted", False):
            self._deleted = True
            meta = MetaStore(paths.meta, readonly=False)
            meta.commit([], deleted=[401])  # the keeper of (401, 20): the larger image
            meta.close()
        return load(self, rows)

    monkeypatch.setattr(dedup_module._IndexRows, "load", load_after_a_deletion)
    result = find_duplicates(open_index(paths.root), threshold=0.95, device="cpu", method="exact")
    assert sorted(_groups(result)) == [["0010.jpg", "0400.jpg"], ["0030.jpg", "0402.jpg"], ["0040.jpg", "0403.jpg"]]
    assert result.stats["groups_dropped_images_gone"] == 1


def test_lmdb_pages_handed_back_mid_scan_keep_records_readable(planted):
    paths, _ = planted
    meta = MetaStore(paths.meta, readonly=True)
    try:
        seen = []
        for n, rec in enumerate(meta.iter_records()):
            seen.append(rec.path)
            if n % 50 == 0:
                meta.drop_pages()
        meta.drop_pages()
        assert len(seen) == N + 4 and meta.get(7).path == "/photos/0007.jpg"
    finally:
        meta.close()


def test_stored_vectors_read_whole_or_with_gaps(planted):
    paths, x = planted
    reader = open_index(paths.root)
    for ids in (np.arange(N + 4), np.array([0, 1, 2, 149, 150, 151, 300, 403]), np.array([5, 7, 160])):
        got = reader.vectors(ids, float16=True)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, (x[ids].astype(np.float16) * np.float16(1.3)))
