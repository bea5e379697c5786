"""Two-level IVF training, the nested quantizer, and reading several shards as one index."""
from __future__ import annotations

import faiss
import numpy as np

from dinoret.indexer import coarse
from dinoret.indexer.index_type import choose_index, ivfpq_spec
from dinoret.indexer.shards import read_merged, train_template, write_index


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_shards(tmp_path, template, x, bounds):
    """Shard files of ``template`` holding rows ``bounds[i]:bounds[i+1]`` of ``x`` (ids = rows)."""
    paths = []
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        index = faiss.clone_index(template)
        index.add_with_ids(x[lo:hi], np.arange(lo, hi, dtype=np.int64))
        write_index(index, tmp_path / f"s{s}.faiss")
        paths.append(tmp_path / f"s{s}.faiss")
    return paths


def test_shares_split_exactly():
    share = coarse._shares(np.array([100, 1, 0, 50]), 20)
    assert share.sum() == 20 and share[2] == 0 and share[1] == 1 and share[0] > share[3]


def test_two_level_centroids_cover_the_data():
    x = _unit(6000, 32, 0)
    c = coarse.two_level_centroids(x, 64)
    assert c.shape == (64, 32)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)
    # Every point is close to some centroid: far closer than to a random direction.
    assert float(np.mean(np.max(x @ c.T, axis=1))) > 0.8


def test_large_spec_trains_two_levels_and_keeps_a_flat_quantizer():
    spec = ivfpq_spec(10_000_000, 384)
    assert spec["nlist"] == 16384 and spec["factory"].startswith("IVF16384,PQ")
    assert spec["coarse_training"] == "two_level" and "quantizer_nprobe" not in spec
    assert "coarse_training" not in ivfpq_spec(100_000, 384)


def test_an_index_with_the_nested_quantizer_of_before_is_rebuilt():
    old = dict(ivfpq_spec(10_000_000, 384), factory="IVF16384(IVF128,Flat),PQ96x4fs", quantizer_nprobe=16)
    del old["coarse_training"]
    assert choose_index(10_000_000, 384, old) != old
    new = ivfpq_spec(10_000_000, 384)
    assert choose_index(10_000_000, 384, new) is new


def test_two_level_training_with_a_flat_quantizer_puts_vectors_in_their_nearest_list(tmp_path):
    d, nlist = 32, 64
    x = _unit(8000, d, 2)
    spec = dict(ivfpq_spec(8000, d), factory=f"IVF{nlist},PQ8x4fs", nlist=nlist, coarse_training="two_level")
    index = train_template(spec, d, x)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    assert isinstance(quantizer, faiss.IndexFlat) and quantizer.ntotal == nlist
    centroids = quantizer.reconstruct_n(0, nlist)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    _, lists = quantizer.search(x, 1)
    np.testing.assert_array_equal(lists[:, 0], np.argmax(x @ centroids.T, axis=1))


def test_nested_index_finds_neighbours_and_shards_merge(tmp_path):
    d, nlist = 32, 64
    x = _unit(8000, d, 1)
    template = faiss.index_factory(d, coarse.nested_factory(nlist, "PQ32x4fs"), faiss.METRIC_INNER_PRODUCT)
    coarse.train_two_level(template, x)
    shards = _write_shards(tmp_path, template, x, [0, 5000, 8000])
    spec = {"type": "ivfpq", "nprobe": 16, "nlist": nlist, "quantizer_nprobe": 8}
    merged = read_merged(shards, spec)
    assert len(merged) == 1 and merged[0].ntotal == 8000
    whole = faiss.clone_index(template)
    whole.add_with_ids(x, np.arange(8000, dtype=np.int64))
    whole.nprobe = 16
    coarse.set_quantizer_nprobe(whole, 8)
    q = x[::97]
    d1, i1 = merged[0].search(q, 20)
    d2, i2 = whole.search(q, 20)
    np.testing.assert_allclose(np.sort(d1, axis=1), np.sort(d2, axis=1), rtol=1e-5, atol=1e-5)
    # 4-bit PQ blurs close neighbours, but each point is among its own 20 best candidates.
    assert np.mean([i in row for i, row in zip(range(0, 8000, 97), i1)]) > 0.9


def _block_shards(tmp_path, sizes):
    """Shards of one trained IVF1,PQ8x4fs template (32 codes of 4 bytes: 128-byte blocks)."""
    d = 16
    x = _unit(sum(sizes), d, 3)
    template = faiss.index_factory(d, "IVF1,PQ8x4fs", faiss.METRIC_INNER_PRODUCT)
    template.train(x)
    paths, start = [], 0
    for s, n in enumerate(sizes):
        index = faiss.clone_index(template)
        index.add_with_ids(x[start : start + n], np.arange(start, start + n, dtype=np.int64))
        write_index(index, tmp_path / f"s{s}.faiss")
        paths.append(tmp_path / f"s{s}.faiss")
        start += n
    whole = faiss.clone_index(template)
    whole.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return paths, whole, x


def test_shards_faiss_would_overflow_merging_are_kept_apart(tmp_path):
    # A first shard whose list holds 128 codes (the block size in bytes): Faiss 1.15's
    # merge_from would copy past the list's end. The shard after it is searched apart.
    spec = {"type": "ivfpq", "nprobe": 1, "nlist": 1}
    paths, whole, x = _block_shards(tmp_path, [128, 50, 30])
    parts = read_merged(paths, spec)
    assert len(parts) == 3 and sum(p.ntotal for p in parts) == 208
    from dinoret.indexer.shards import search_shards

    whole.nprobe = 1
    d1, i1 = search_shards(parts, x[::7], 20)
    d2, i2 = whole.search(x[::7], 20)
    np.testing.assert_allclose(d1, d2, rtol=1e-5, atol=1e-5)
    # Sizes that are not a multiple of the block size merge into one index.
    paths, _, _ = _block_shards(tmp_path, [100, 50, 30])
    assert len(read_merged(paths, spec)) == 1


def test_float16_coarse_quantizer_probes_the_lists_of_the_flat_one(tmp_path):
    from dinoret.indexer.shards import COARSE_FLOAT16_MIN_NLIST, coarse_quantizer, search_shards

    d, nlist = 32, 64
    x = _unit(6000, d, 4)
    spec = dict(ivfpq_spec(6000, d), factory=f"IVF{nlist},PQ8x4fs", nlist=nlist, nprobe=6)
    template = train_template(spec, d, x)
    paths = _write_shards(tmp_path, template, x, [0, 2500, 6000])
    parts = read_merged(paths, spec)
    assert coarse_quantizer(parts, spec) is None  # 64 lists: below COARSE_FLOAT16_MIN_NLIST
    assert nlist < COARSE_FLOAT16_MIN_NLIST
    fp16 = coarse_quantizer(parts, spec, min_nlist=1)
    assert fp16 is not None and fp16.ntotal == nlist and fp16.code_size == 2 * d
    q = x[::13]
    d1, i1 = search_shards(parts, q, 20, fp16)
    d2, i2 = search_shards(parts, q, 20)
    # Same lists probed (float16 centroids rank them alike here), hence the same candidates.
    assert np.mean(i1 == i2) > 0.99
    np.testing.assert_allclose(d1, d2, atol=2e-3)
    # The probe count of the index is honoured: one list finds fewer of the 20 than six.
    for part in parts:
        part.nprobe = 1
    _, i3 = search_shards(parts, q, 20, fp16)
    assert np.mean(i3 == i2) < 0.9


def test_large_indexes_probe_one_list_in_16_even_when_built_under_the_old_rule():
    from dinoret.indexer.index_type import choose_nprobe, search_spec

    assert choose_nprobe(4096) == 128 and choose_nprobe(16384) == 1024
    assert ivfpq_spec(10_000_000, 384)["nprobe"] == 1024
    old = dict(ivfpq_spec(10_000_000, 384), nprobe=256)  # written by the 2·sqrt(nlist) rule
    assert search_spec(old, "ivfpq")["nprobe"] == 1024 and old["nprobe"] == 256
    nested = dict(old, quantizer_nprobe=16)
    assert search_spec(nested, "ivfpq") is nested
    assert search_spec({"factory": "IDMap,Flat"}, "flat") == {"factory": "IDMap,Flat"}
