"""kNN edges: exact and Faiss engines agree with brute force on small random sets."""
import numpy as np
import pytest

from dinoret.retrieval.knn_graph import choose_method, knn_edges


def unit(rng, n, d=32):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_pairs(x, k, threshold):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    pairs = set()
    for i in range(len(x)):
        for j in np.argsort(-s[i])[:k]:
            if s[i, j] >= threshold:
                pairs.add((min(i, j), max(i, j)))
    return pairs


@pytest.mark.parametrize("method", ["exact", "faiss", "ivfpq", "ivfpq-two-level"])
def test_self_graph_matches_brute_force(method, monkeypatch):
    if method == "ivfpq-two-level":  # the nested quantizer of very large sets, on a small one
        import dinoret.indexer.coarse as coarse

        monkeypatch.setattr(coarse, "TWO_LEVEL_MIN_NLIST", 2)
        method = "ivfpq"
    rng = np.random.default_rng(0)
    base = unit(rng, 150)
    # 40 near copies so that real edges clear the threshold
    noisy = base[:40] + 0.05 * rng.standard_normal((40, base.shape[1])).astype(np.float32)
    x = np.concatenate([base, noisy / np.linalg.norm(noisy, axis=1, keepdims=True)])
    src, dst, score = knn_edges(x, k=5, threshold=0.8, method=method, device="cpu", nprobe=64)
    got = set(zip(src.tolist(), dst.tolist()))
    assert got == brute_pairs(x, 5, 0.8)
    assert len(got) == len(src), "each undirected pair once"
    assert (src < dst).all()
    np.testing.assert_allclose(score, np.einsum("ij,ij->i", x[src], x[dst]), atol=1e-5)


def test_block_boundaries_and_self_exclusion(monkeypatch):
    import dinoret.retrieval.knn_graph as kg

    monkeypatch.setattr(kg, "BLOCK_BYTES", 4 * 7 * 50)  # 7 rows per block over 50 vectors
    rng = np.random.default_rng(1)
    x = unit(rng, 50)
    src, dst, _ = knn_edges(x, k=3, threshold=-1.0, method="exact", device="cpu")
    assert not (src == dst).any()
    assert set(zip(src.tolist(), dst.tolist())) == brute_pairs(x, 3, -1.0)


def test_cross_graph_against_other_set():
    rng = np.random.default_rng(2)
    y = unit(rng, 20)
    x = np.concatenate([unit(rng, 30), y[:5]])  # rows 30..34 are copies of y[0..4]
    src, dst, score = knn_edges(x, k=1, threshold=0.99, y=y, method="exact", device="cpu")
    assert sorted(zip(src.tolist(), dst.tolist())) == [(30 + i, i) for i in range(5)]
    assert np.allclose(score, 1.0, atol=1e-5)


def test_tiny_and_empty_inputs():
    assert all(len(a) == 0 for a in knn_edges(np.zeros((0, 8), np.float32)))
    one = unit(np.random.default_rng(3), 1)
    assert all(len(a) == 0 for a in knn_edges(one, k=5))
    with pytest.raises(ValueError):
        knn_edges(unit(np.random.default_rng(3), 4), method="annoy")


def test_auto_prefers_exact_on_gpu_and_small_sets():
    import torch

    assert choose_method(1000, 1000, torch.device("cpu")) == "exact"
    assert choose_method(10**6, 10**6, torch.device("cpu")) == "ivfpq"
    assert choose_method(10**6, 10**6, torch.device("cuda")) == "exact"


@pytest.mark.parametrize("method", ["exact", "ivfpq"])
def test_float16_as_stored_gives_the_exact_cosines(method):
    """Vectors read as stored (float16, not quite unit length) are normalised once and every
    edge score is the cosine of the two stored rows."""
    rng = np.random.default_rng(4)
    base = unit(rng, 120)
    copies = base[:30] + 0.05 * rng.standard_normal((30, base.shape[1])).astype(np.float32)
    x = np.concatenate([base, copies]).astype(np.float16) * np.float16(1.7)  # stored rows need not be unit
    ref = x.astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    src, dst, score = knn_edges(x, k=4, threshold=0.8, method=method, device="cpu", nprobe=64)
    assert set(zip(src.tolist(), dst.tolist())) == brute_pairs(ref, 4, 0.8)
    np.testing.assert_allclose(score, np.einsum("ij,ij->i", ref[src], ref[dst]), atol=1e-5)
