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


@pytest.mark.parametrize("method", ["exact", "ivf", "faiss", "ivfpq", "ivfpq-two-level"])
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


@pytest.mark.parametrize("db_rows", [50, 16])
def test_block_boundaries_and_self_exclusion(monkeypatch, db_rows):
    import dinoret.retrieval.knn_graph as kg

    monkeypatch.setattr(kg, "CPU_DB_ROWS", db_rows)  # 16: the database in 4 blocks, merged per query
    monkeypatch.setattr(kg, "CPU_BLOCK_BYTES", 4 * 7 * db_rows)  # 7 query rows per block
    rng = np.random.default_rng(1)
    x = unit(rng, 50)
    src, dst, _ = knn_edges(x, k=3, threshold=-1.0, method="exact", device="cpu")
    assert not (src == dst).any()
    assert set(zip(src.tolist(), dst.tolist())) == brute_pairs(x, 3, -1.0)


def test_ivf_low_threshold_keeps_k_per_row(monkeypatch):
    """Every pair clears a threshold of -1: edges are cut back to k a row as they pile up."""
    import dinoret.retrieval.knn_graph as kg

    monkeypatch.setattr(kg, "EDGE_SLACK", 0)
    x = unit(np.random.default_rng(5), 300)
    src, dst, _ = knn_edges(x, k=4, threshold=-1.0, method="ivf", device="cpu", nprobe=100)
    assert set(zip(src.tolist(), dst.tolist())) == brute_pairs(x, 4, -1.0)


def test_ivf_finds_near_copies_probing_few_lists():
    """Clustered data, more lists than probes: a near copy sits in its original's nearest lists."""
    rng = np.random.default_rng(6)
    centres = unit(rng, 40, d=64)
    base = centres[rng.integers(0, 40, 2000)] + 0.15 * rng.standard_normal((2000, 64)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[:50] + 0.02 * rng.standard_normal((50, 64)).astype(np.float32)
    x = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    assert kg_lists(len(x)) > 8
    src, dst, score = knn_edges(x, k=5, threshold=0.97, method="ivf", device="cpu", nprobe=4)
    assert set(zip(src.tolist(), dst.tolist())) == brute_pairs(x, 5, 0.97)
    np.testing.assert_allclose(score, np.einsum("ij,ij->i", x[src], x[dst]), atol=1e-5)


def kg_lists(n):
    from dinoret.retrieval.knn_graph import ivf_lists

    return ivf_lists(n)


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
    assert choose_method(10**6, 10**6, torch.device("cpu")) == "ivf"
    assert choose_method(10**6, 10**6, torch.device("cuda")) == "exact"
    assert choose_method(10**6, 10**6, "cpu") == "ivf"


@pytest.mark.parametrize("method", ["exact", "ivf", "ivfpq"])
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
