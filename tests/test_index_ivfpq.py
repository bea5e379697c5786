"""The IVF-PQ path (forced at small N): shared training, recall against exact search,
incremental adds and deletions without retraining; and the index-type rules."""
from __future__ import annotations

import shutil

import faiss
import numpy as np
import pytest

from dinoret.indexer.catalog import open_catalog, read_info, read_shards
from dinoret.indexer.commit import commit_vectors, create_info
from dinoret.indexer.index_type import FLAT_MAX, choose_index, choose_m, choose_nlist
from dinoret.indexer.layout import IndexPaths
from dinoret.indexer.meta import MetaStore, Record
from dinoret.indexer.shards import read_index
from dinoret.indexer.sync import sync_shards
from dinoret.retrieval.index import open_index

DIM = 64


def _clustered(n: int, seed: int, n_clusters: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((n_clusters, DIM))
    x = centres[rng.integers(0, n_clusters, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _add(paths: IndexPaths, vectors: np.ndarray, start: int) -> None:
    items = ((Record(-1, f"/v/{start + i}", 0, 0.0, f"{start + i:032x}", None, 0, 0, -1), v) for i, v in enumerate(vectors))
    commit_vectors(paths, items, shard_size=1000, commit_every=500)


def _sync(paths: IndexPaths, **kw):
    engine = open_catalog(paths.catalog)
    meta = MetaStore(paths.meta, readonly=False)
    try:
        return sync_shards(paths, engine, meta, DIM, **kw)
    finally:
        meta.close()


def _recall(reader, queries: np.ndarray, rerank: bool) -> float:
    ids = reader.ids()
    exact = ids[np.argsort(-(queries @ reader.vectors(ids).T), axis=1)[:, :10]]
    _, found = reader.search(queries, k=10, rerank=rerank)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, exact)]))


@pytest.fixture(scope="module")
def _trained(tmp_path_factory) -> IndexPaths:
    paths = IndexPaths.of(tmp_path_factory.mktemp("ivf") / "idx")
    paths.root.mkdir()
    engine = open_catalog(paths.catalog, create=True)
    create_info(engine, {"model": "synthetic", "weights_sha256": "-", "dim": DIM, "backbone_config": {}, "preprocess": {}}, "", 1000)
    _add(paths, _clustered(3000, seed=1), 0)
    result = _sync(paths, forced="ivfpq")
    assert result.rebuilt and result.spec["type"] == "ivfpq"
    return paths


@pytest.fixture
def ivf_index(_trained, tmp_path) -> IndexPaths:
    """A fresh copy of the trained index for each test (training once keeps the tests fast)."""
    shutil.copytree(_trained.root, tmp_path / "idx")
    return IndexPaths.of(tmp_path / "idx")


def test_ivfpq_shards_share_one_trained_quantizer_and_codebooks(ivf_index):
    engine = open_catalog(ivf_index.catalog)
    info = read_info(engine)
    assert info.index_type == "ivfpq" and info.index_params["factory"].endswith("x4fs")
    keep = [read_index(ivf_index.shards / info.template_file)]  # the IVF part dies with its index
    template = faiss.downcast_index(faiss.extract_index_ivf(keep[0]))
    shards = read_shards(engine)
    assert [r.n_vectors for r in shards] == [1000, 1000, 1000]
    for row in shards:
        keep.append(read_index(ivf_index.shards / row.file))
        ivf = faiss.downcast_index(faiss.extract_index_ivf(keep[-1]))
        np.testing.assert_array_equal(faiss.vector_to_array(ivf.pq.centroids), faiss.vector_to_array(template.pq.centroids))
        np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, ivf.nlist), template.quantizer.reconstruct_n(0, ivf.nlist))


def test_ivfpq_recall_at_10_against_exact_search(ivf_index):
    reader = open_index(ivf_index.root)
    queries = _clustered(100, seed=2)
    with_rerank, without = _recall(reader, queries, True), _recall(reader, queries, False)
    assert with_rerank >= 0.95
    assert with_rerank >= without
    scores, ids = reader.search(queries[:3], k=10)
    exact = np.einsum("qkd,qd->qk", reader.vectors(ids.ravel()).reshape(3, 10, DIM), queries[:3])
    np.testing.assert_allclose(scores, exact, atol=1e-5)  # re-ranked scores are exact cosines
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_ivfpq_adds_and_deletes_without_retraining(ivf_index):
    template_before = read_info(open_catalog(ivf_index.catalog)).template_file
    _add(ivf_index, _clustered(300, seed=3), 3000)
    meta = MetaStore(ivf_index.meta, readonly=False)
    doomed = list(range(0, 3300, 7))
    meta.commit([], deleted=doomed)
    meta.close()
    reader = open_index(ivf_index.root)
    _, found = reader.search(_clustered(50, seed=4), k=20)
    assert not set(found.ravel().tolist()) & set(doomed)  # filtered even before the shards are synced
    result = _sync(ivf_index, forced="ivfpq")
    assert not result.rebuilt
    engine = open_catalog(ivf_index.catalog)
    assert read_info(engine).template_file == template_before
    assert sum(r.n_vectors for r in read_shards(engine)) == 3300 - len(doomed)
    reader = open_index(ivf_index.root)
    assert reader.meta.tombstone_count() == 0
    assert _recall(reader, _clustered(100, seed=5), True) >= 0.95


def test_index_type_follows_size(ivf_index):
    assert choose_index(1000, 384)["type"] == "flat"
    big = choose_index(FLAT_MAX + 1, 384)
    assert big["type"] == "ivfpq" and big["factory"] == "IVF1024,PQ96x4fs"
    assert choose_index(2 * FLAT_MAX, 384, current=big) is big  # small growth keeps the training
    assert choose_index(40 * FLAT_MAX, 384, current=big) is not big
    assert choose_index(FLAT_MAX // 4, 384, current=big)["type"] == "flat"
    assert choose_nlist(1_000_000) == 4096 and choose_nlist(1000) == 16
    assert choose_m(384) == 96 and choose_m(64) == 32
    # Automatic switch from IVF-PQ back to flat when the collection shrinks below the threshold.
    result = _sync(ivf_index, flat_max=10_000)
    assert result.rebuilt and result.spec["type"] == "flat"
    reader = open_index(ivf_index.root)
    assert reader.stats()["index_type"] == "flat" and _recall(reader, _clustered(20, seed=6), False) == 1.0
