"""Union-find, exact-copy labels, keeper policy, the star split and find_groups on planted data."""
import numpy as np
import pytest

from dinoret.retrieval.groups import (UnionFind, components, find_groups, first_match, keeper_rank, key_digests,
                                      labels_from_keys, star_split)


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_union_find_components():
    uf = UnionFind(7)
    uf.union_pairs(np.array([0, 1, 4]), np.array([1, 2, 5]))
    comps = components(uf.labels())
    assert [c.tolist() for c in comps] == [[0, 1, 2], [4, 5]]


def test_labels_from_keys_joins_either_hash():
    content = ["a", "b", "a", None, "c"]
    pixels = [None, "p", None, "p", "q"]
    labels = labels_from_keys(5, content, pixels)
    assert labels[0] == labels[2]
    assert labels[1] == labels[3]  # same pixels, different bytes (e.g. PNG vs BMP)
    assert len({labels[0], labels[1], labels[4]}) == 3


def test_keeper_rank_policies_and_deterministic_ties():
    w = np.array([100, 200, 200, 50])
    h = np.array([100, 100, 100, 50])
    size = np.array([10, 30, 30, 5])
    mtime = np.array([5.0, 3.0, 3.0, 9.0])
    paths = ["/d/c.jpg", "/d/b.jpg", "/d/a.jpg", "/d/0.jpg"]
    assert keeper_rank("largest", w, h, size, mtime, paths).argmin() == 2  # tie with 1, broken by path
    assert keeper_rank("oldest", w, h, size, mtime, paths).argmin() == 2
    assert keeper_rank("first", w, h, size, mtime, paths).argmin() == 3
    with pytest.raises(ValueError):
        keeper_rank("newest", w, h, size, mtime, paths)


def test_star_split_breaks_chains():
    # a -- b -- c: a.b and b.c clear 0.8, a.c does not.
    a, b, c = unit([1, 0, 0]), unit([0.8, 0.6, 0]), unit([0.28, 0.96, 0])
    vecs = np.stack([a, b, c])
    assert vecs[0] @ vecs[1] >= 0.8 and vecs[1] @ vecs[2] >= 0.8 and vecs[0] @ vecs[2] < 0.8
    # keeper a first: a takes b, c stays alone
    assert [s.tolist() for s in star_split(vecs, np.array([0, 1, 2]), 0.8)] == [[0, 1]]
    # keeper b first: b is close to both, one group
    assert [s.tolist() for s in star_split(vecs, np.array([1, 0, 2]), 0.8)] == [[1, 0, 2]]


def test_star_split_keeps_exact_copies_together():
    a, b = unit([1, 0, 0]), unit([0.8, 0.6, 0])
    c = unit([0.28, 0.96, 0])
    vecs = np.stack([a, b, c, c])  # rows 2, 3 are exact copies
    atoms = np.array([0, 1, 2, 2])
    # a takes b; the copies of c stay together as their own group
    assert [s.tolist() for s in star_split(vecs, np.array([0, 1, 2, 3]), 0.8, atoms)] == [[0, 1], [2, 3]]


def planted(n=400, pairs=30, d=48, noise=0.08, seed=0):
    rng = np.random.default_rng(seed)
    x = unit(rng.standard_normal((n, d)))
    copies = unit(x[:pairs] + noise * rng.standard_normal((pairs, d)))
    return np.concatenate([x, copies]), {(i, n + i) for i in range(pairs)}


@pytest.mark.parametrize("method", ["exact", "faiss"])
def test_find_groups_recovers_planted_pairs_only(method):
    x, truth = planted()
    groups = find_groups(x, threshold=0.8, k=5, method=method, device="cpu", nprobe=64)
    found = {tuple(sorted(g.rows.tolist())) for g in groups}
    assert found == truth
    for g in groups:
        assert g.scores[0] == 1.0 and (g.scores[1:] >= 0.8).all()


def test_find_groups_exact_copies_and_rank():
    x, _ = planted(n=50, pairs=0)
    x[7] = x[3]
    exact = labels_from_keys(len(x), ["h" if i in (3, 7) else None for i in range(len(x))])
    rank = np.arange(len(x))[::-1].copy()  # later rows preferred
    groups = find_groups(x, threshold=0.95, k=3, rank=rank, exact_labels=exact, device="cpu")
    assert len(groups) == 1
    assert groups[0].rows.tolist() == [7, 3]
    assert groups[0].exact.tolist() == [True, True]


def test_find_groups_without_split_merges_the_chain():
    a, b, c = unit([1, 0, 0]), unit([0.8, 0.6, 0]), unit([0.28, 0.96, 0])
    vecs = np.stack([a, b, c])
    split = find_groups(vecs, 0.8, k=2, device="cpu")
    merged = find_groups(vecs, 0.8, k=2, split=False, device="cpu")
    assert [g.rows.tolist() for g in split] == [[0, 1]]
    assert [g.rows.tolist() for g in merged] == [[0, 1, 2]]


def test_union_find_many_pairs_match_a_graph_search():
    """The array-at-once unions give the connected components of the pairs."""
    rng = np.random.default_rng(7)
    n = 500
    src, dst = rng.integers(0, n, 400), rng.integers(0, n, 400)
    uf = UnionFind(n)
    uf.union_pairs(src[:200], dst[:200])
    uf.union(int(src[200]), int(dst[200]))
    uf.union_pairs(src[201:], dst[201:])
    labels = uf.labels()
    adj = {i: set() for i in range(n)}
    for a, b in zip(src.tolist(), dst.tolist()):
        adj[a].add(b)
        adj[b].add(a)
    seen: dict[int, int] = {}
    for start in range(n):
        if start in seen:
            continue
        stack = [start]
        seen[start] = start
        while stack:
            for j in adj[stack.pop()]:
                if j not in seen:
                    seen[j] = start
                    stack.append(j)
    for a in range(n):
        for b in (0, a // 2, n - 1):
            assert (labels[a] == labels[b]) == (seen[a] == seen[b])
    assert all(uf.find(a) == labels[a] for a in range(n))


def test_first_match_and_digest_labels():
    table = key_digests(["x", None, "y", "x"])
    keys = key_digests(["y", "x", None, "z", ""])
    assert first_match(keys, table).tolist() == [2, 0, -1, -1, -1]
    assert first_match(keys, key_digests([])).tolist() == [-1] * 5
    # digests in, same labels as strings in
    content = ["a", "b", "a", None, "c"]
    pixels = [None, "p", None, "p", "q"]
    assert labels_from_keys(5, key_digests(content), key_digests(pixels)).tolist() == \
        labels_from_keys(5, content, pixels).tolist()


def test_find_groups_reads_ranks_for_grouped_rows_only():
    x, truth = planted(n=200, pairs=5)
    asked = []

    def rank(rows):
        asked.append(rows.copy())
        return -rows  # later rows preferred

    groups = find_groups(x, threshold=0.8, k=5, rank=rank, device="cpu")
    assert len(asked) == 1 and set(asked[0].tolist()) == {r for pair in truth for r in pair}
    assert [g.rows.tolist() for g in groups] == [[200 + i, i] for i in range(4, -1, -1)]
