"""Curation core: spherical k-means, the hierarchy, balanced sampling, `dinoret curate clusters|sample`.

Indexes here are made straight from planted vectors (tests/vector_index.py), so every
expected cluster is known.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.retrieval import kmeans
from dinoret.retrieval.clusterings import load_clustering
from dinoret.retrieval.hierarchy import build_hierarchy
from dinoret.retrieval.index import open_index
from dinoret.retrieval.kmeans import KMeansParams, spherical_kmeans
from dinoret.retrieval.sampling import balanced_sample, capped_quotas
from dinoret.retrieval.vector_rows import ArrayRows, StoreRows
from tests.vector_index import add_vectors, planted, remove_ids, vector_index

LONG_TAIL = [400, 200, 100, 50, 25, 12, 6, 3]


def _cli(*args):
    return CliRunner().invoke(main, ["curate", *map(str, args)])


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    return sum(Counter(truth[labels == j]).most_common(1)[0][1] for j in np.unique(labels)) / len(truth)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    pairs = set(zip(labels.tolist(), truth.tolist()))
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


@pytest.mark.parametrize("two_stage", [False, True])
def test_planted_clusters_are_recovered(two_stage, monkeypatch) -> None:
    x, truth, centres = planted(LONG_TAIL)
    if two_stage:  # the path large k takes on a CPU: cells first, k-means inside each
        monkeypatch.setattr(kmeans, "TWO_STAGE_WORK", 100)
    res = spherical_kmeans(ArrayRows(x), len(LONG_TAIL), KMeansParams(), seed=3)
    assert _same_partition(res.labels, truth)
    # Every centroid is its planted centre, every cosine is the row's to it.
    match = res.centroids @ centres.T
    assert (match.max(axis=1) > 0.99).all()
    assert np.allclose(res.sims, np.einsum("nd,nd->n", x, res.centroids[res.labels]), atol=1e-5)


def test_two_stage_labels_are_each_rows_nearest_centroid(monkeypatch) -> None:
    """Two stages train the centroids, but no row is left in the cluster its cell routed it to:
    on a long tail with no coarse structure (components at random, wide noise, as in
    benchmarks/curate_balance.py) rows of small components are far from every cell centre."""
    rng = np.random.default_rng(5)
    sizes = np.maximum(1, (600 / np.arange(1, 61)).astype(int))
    centres = rng.standard_normal((60, 64))
    truth = np.repeat(np.arange(60), sizes)
    noise = rng.standard_normal((len(truth), 64)) / 8.0 * rng.uniform(0.6, 1.2, 60)[truth, None]
    x = (centres / np.linalg.norm(centres, axis=1, keepdims=True))[truth] + noise
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    monkeypatch.setattr(kmeans, "TWO_STAGE_WORK", 100)
    for steps in (0, 2):
        res = spherical_kmeans(ArrayRows(x), 60, KMeansParams(resample_steps=steps), seed=1)
        ip = x @ res.centroids.T
        assert np.array_equal(res.labels, ip.argmax(axis=1)), steps
        assert np.allclose(res.sims, ip.max(axis=1), atol=1e-5)


def test_kmeans_is_deterministic_and_seeded() -> None:
    x, _, _ = planted([60] * 12, noise=0.3, seed=1)
    a = spherical_kmeans(ArrayRows(x), 12, KMeansParams(resample_steps=2, resample_points=5), seed=7)
    b = spherical_kmeans(ArrayRows(x), 12, KMeansParams(resample_steps=2, resample_points=5), seed=7)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.centroids, b.centroids)
    c = spherical_kmeans(ArrayRows(x), 12, KMeansParams(resample_steps=2, resample_points=5), seed=8)
    assert not np.array_equal(a.centroids, c.centroids)


def test_more_clusters_than_points_is_a_user_error() -> None:
    from dinoret.core.errors import UserError

    with pytest.raises(UserError, match="more clusters than points"):
        spherical_kmeans(ArrayRows(np.eye(4, dtype=np.float32)), 5)


def test_hierarchy_groups_leaves_under_their_parents(tmp_path) -> None:
    # Four groups of two planted clusters each: leaves = clusters, level 2 = groups.
    rng = np.random.default_rng(0)
    groups = planted([1, 1, 1, 1], dim=32, noise=0.0, seed=5)[2]
    centres = np.concatenate([groups + 0.15 * rng.standard_normal(groups.shape) for _ in range(2)])
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(8), 40)
    x = centres[truth] + 0.01 * rng.standard_normal((len(truth), 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    idx = vector_index(tmp_path / "idx", x)
    reader = open_index(idx)
    h = build_hierarchy(StoreRows(reader.store, reader.ids()), reader.ids(), [8, 4], [0, 0], KMeansParams())
    assert _same_partition(h.labels, truth)
    assert _same_partition(h.cluster_of(2), truth % 4)
    assert h.path_table().shape == (320, 2) and (h.path_table()[:, 1] == h.cluster_of(2)).all()


def test_capped_quotas_hit_the_target_and_cap_the_large() -> None:
    sizes = np.array([100, 50, 10, 3, 1])
    q = capped_quotas(sizes, 40)
    assert q.sum() == 40 and (q <= sizes).all()
    assert q.tolist() == [13, 13, 10, 3, 1]  # cap 12 gives 39; the leftover goes to the largest
    assert capped_quotas(sizes, int(sizes.sum())).tolist() == sizes.tolist()
    assert capped_quotas(np.array([5, 5, 5]), 7).tolist() == [3, 2, 2]


def test_sampling_covers_leaves_first_then_balances_images() -> None:
    from dinoret.retrieval.hierarchy import Hierarchy
    from dinoret.retrieval.sampling import leaf_quotas

    # Top cluster 0 has one leaf of 100 images; top cluster 1 has ten leaves of 10 images.
    labels = np.repeat(np.arange(11), [100] + [10] * 10).astype(np.int32)
    parents = np.array([0] + [1] * 10, np.int32)
    h = Hierarchy(np.arange(len(labels)), labels, np.ones(len(labels), np.float32),
                  [np.eye(11, dtype=np.float32), np.eye(2, 11, dtype=np.float32)], [parents])
    # 10 images: one leaf each before any leaf gives two, balanced over the tops in leaves.
    assert leaf_quotas(h, 10).tolist() == [1] + [1] * 9 + [0]
    # 31: every leaf once, then the other 20 by the cap rule on images (10 and 10).
    q = leaf_quotas(h, 31)
    assert q.sum() == 31 and q[0] == 11 and q[1:].sum() == 20 and q.min() >= 1
    # Excluded images do not count: leaf 0 has none left.
    eligible = labels != 0
    assert leaf_quotas(h, 10, eligible).tolist() == [0] + [1] * 10
    picked = balanced_sample(h, 10, eligible=eligible)
    assert sorted(labels[picked].tolist()) == list(range(1, 11))


def test_cell_shares_and_rank_blocks() -> None:
    from dinoret.retrieval.kmeans import Shard, allocate

    shares = allocate(100, np.array([500, 40, 3, 0, 60]), np.array([50.0, 30.0, 30.0, 0.0, 1.0]))
    assert shares.sum() == 100 and shares[3] == 0 and (shares[[0, 1, 2, 4]] >= 1).all()
    assert shares[2] == 3 and (shares <= [500, 40, 3, 0, 60]).all()  # capped, the rest goes by weight
    with pytest.raises(ValueError):
        allocate(2, np.array([5, 5, 5]), np.ones(3))
    # The ranks' blocks tile the rows, in order, on the same global grid whatever the world size.
    n = 5 * kmeans.BLOCK + 7
    for world in (1, 2, 3, 8):
        blocks = [b for r in range(world) for b in Shard(r, world).blocks(n)]
        assert blocks == Shard().blocks(n) and blocks[-1][1] == n


@pytest.fixture
def tail_index(tmp_path):
    x, truth, _ = planted(LONG_TAIL, seed=2)
    return vector_index(tmp_path / "idx", x), truth


def test_cli_clusters_then_sample_flattens_a_long_tail(tail_index, tmp_path) -> None:
    idx, truth = tail_index
    r = _cli("clusters", "--index", idx, "--clusters", "8,3", "--resample", "1", "--seed", 4, "-q")
    assert r.exit_code == 0, r.output
    assert "clustered 796 images" in r.output and "level 2: 3 clusters" in r.output
    reader = open_index(idx)
    h, row = load_clustering(reader.engine, reader.root)
    assert row.params["levels"] == [8, 3] and row.n_images == 796
    assert _same_partition(h.labels, truth)

    out = tmp_path / "pick.csv"
    r = _cli("sample", "--index", idx, "--target", 60, "--out", out, "--seed", 1)
    assert r.exit_code == 0, r.output
    rows = out.read_text().splitlines()
    assert rows[0] == "id,path,cluster_l1,cluster_l2,reason,seed_id,seed_path,similarity"
    chosen = [int(line.split(",")[0]) for line in rows[1:]]
    assert len(chosen) == 60 == len(set(chosen))  # the target exactly, no repeats
    per_cluster = np.bincount(truth[chosen], minlength=len(LONG_TAIL))
    # The pool is 50% cluster 0; the sample takes the smallest clusters whole and caps the big ones.
    assert per_cluster[6:].tolist() == [6, 3]
    assert per_cluster.max() < 0.35 * 60
    assert _entropy(per_cluster) > _entropy(np.array(LONG_TAIL)) + 0.5
    assert all(line.split(",")[4] == "balanced" for line in rows[1:])

    # Same seed, same selection; .txt and .json say the same.
    txt, js = tmp_path / "pick.txt", tmp_path / "pick.json"
    assert _cli("sample", "--index", idx, "--target", 60, "--out", txt, "--seed", 1).exit_code == 0
    assert _cli("sample", "--index", idx, "--target", 60, "--out", js, "--seed", 1).exit_code == 0
    paths = [line.split(",")[1] for line in rows[1:]]
    assert txt.read_text().splitlines() == paths
    doc = json.loads(js.read_text())
    assert doc["kind"] == "dinoret-selection" and [i["path"] for i in doc["images"]] == paths
    assert doc["levels"] == [8, 3] and len(doc["images"][0]["clusters"]) == 2

    closest = tmp_path / "closest.csv"
    assert _cli("sample", "--index", idx, "--target", 16, "--strategy", "closest", "--out", closest).exit_code == 0
    sims = [float(line.split(",")[-1]) for line in closest.read_text().splitlines()[1:]]
    assert len(sims) == 16 and min(sims) > 0.9


def test_bad_input_is_one_line(tail_index, tmp_path) -> None:
    idx, _ = tail_index
    r = _cli("sample", "--index", idx, "--target", 5, "--out", tmp_path / "a.txt")
    assert r.exit_code == 2 and "no clustering yet" in r.output
    r = _cli("clusters", "--index", idx, "--clusters", "1000,10")
    assert r.exit_code == 2 and "more clusters than points" in r.output and "Traceback" not in r.output
    r = _cli("clusters", "--index", idx, "--clusters", "10,20")
    assert r.exit_code == 2 and "finest level first" in r.output
    assert _cli("clusters", "--index", idx).exit_code == 2
    assert _cli("clusters", "--index", idx, "--clusters", "8", "-q").exit_code == 0
    r = _cli("sample", "--index", idx, "--target", 797, "--out", tmp_path / "a.txt")
    assert r.exit_code == 2 and "more than the 796 images" in r.output
    r = _cli("sample", "--index", idx, "--target", 5, "--out", tmp_path / "a.parquet")
    assert r.exit_code == 2 and ".txt, .csv or .json" in r.output
    r = _cli("clusters", "--index", idx, "--clusters", "4")
    assert r.exit_code == 2 and "--recluster" in r.output
    r = _cli("clusters", "--index", tmp_path / "nothing", "--clusters", "4")
    assert r.exit_code == 2 and "no index" in r.output


def test_clusters_and_sample_on_a_cpu_import_no_torch(tail_index, tmp_path) -> None:
    """k-means of stored vectors needs no model: one CPU process never imports torch, whose
    0.5 GiB resident would be a quarter of a million-vector clustering's 2 GB budget."""
    idx, truth = tail_index
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules)); "
            "sys.argv = ['dinoret', 'curate', *sys.argv[1:]]; runpy.run_module('dinoret', run_name='__main__')")
    for args in (["clusters", "--index", idx, "--clusters", "8,3", "--resample", "1", "-q", "--device", "cpu"],
                 ["sample", "--index", idx, "--target", "30", "--out", tmp_path / "s.txt", "-q"]):
        out = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                             timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == "torch loaded: False", out.stdout
    h, _ = load_clustering(open_index(idx).engine, idx)
    assert _same_partition(h.labels, truth) and h.params["device"] == "cpu"
    assert len((tmp_path / "s.txt").read_text().splitlines()) == 30


def test_empty_index_is_a_user_error(tmp_path) -> None:
    idx = vector_index(tmp_path / "idx", planted([3])[0])
    remove_ids(idx, open_index(idx).ids())
    r = _cli("clusters", "--index", idx, "--clusters", "2")
    assert r.exit_code == 2 and "no images" in r.output


def test_new_images_join_their_leaf_and_removed_ones_are_reported(tail_index, tmp_path) -> None:
    idx, truth = tail_index
    assert _cli("clusters", "--index", idx, "--clusters", "8", "-q").exit_code == 0
    reader = open_index(idx)
    h0, _ = load_clustering(reader.engine, reader.root)
    # Five new images near cluster 3's members, and the whole of cluster 7 removed.
    x, _, _ = planted(LONG_TAIL, seed=2)
    add_vectors(idx, x[truth == 3][:5] * 0.999)
    remove_ids(idx, h0.ids[truth == 7])
    out = tmp_path / "s.json"
    r = _cli("sample", "--index", idx, "--target", 20, "--out", out)
    assert r.exit_code == 0, r.output
    assert "3 of the 796 images the clustering was made on are no longer in the index" in r.output
    assert "5 images indexed after the clustering were put in their nearest leaf cluster" in r.output
    # Stored by the next `curate clusters` (no re-clustering): the new images sit in cluster 3's leaf.
    r = _cli("clusters", "--index", idx)
    assert r.exit_code == 0 and "5 new images" in r.output and "3 removed" in r.output, r.output
    h1, row = load_clustering(reader.engine, reader.root)
    assert row.n_images == 798 and np.array_equal(h1.centroids[0], h0.centroids[0])
    leaf3 = h0.labels[truth == 3][0]
    assert (h1.labels[-5:] == leaf3).all()
    assert "up to date" in _cli("clusters", "--index", idx).output


def test_a_failed_save_changes_nothing(tail_index, monkeypatch) -> None:
    idx, _ = tail_index
    assert _cli("clusters", "--index", idx, "--clusters", "8", "-q").exit_code == 0
    reader = open_index(idx)
    before, row = load_clustering(reader.engine, reader.root)
    folders = sorted(p.name for p in (idx / "clusters").iterdir())

    real_save = np.save
    calls = []

    def failing_save(f, arr, *a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(f, arr, *a, **kw)

    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(OSError):
        CliRunner().invoke(main, ["curate", "clusters", "--index", str(idx), "--clusters", "4", "--recluster", "-q"],
                           catch_exceptions=False)
    monkeypatch.undo()
    after, row2 = load_clustering(reader.engine, reader.root)
    assert row2.id == row.id and np.array_equal(after.labels, before.labels)
    assert sorted(p.name for p in (idx / "clusters").iterdir()) == folders


@pytest.mark.slow
def test_torchrun_two_processes_find_the_clusters_one_process_finds(tmp_path) -> None:
    """Two gloo processes (rows split over them, sums all-reduced, two-stage cells shared out)
    write bit for bit the clusterings that one process writes (tests/torchrun_curate.py)."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.conftest import REPO, run_in_own_group
    from tests.torchrun_curate import RUNS

    x, _, _ = planted([400] * 50, dim=16, noise=0.2, seed=9)  # 20,000 rows: two blocks of 16,384
    for name in RUNS:
        vector_index(tmp_path / "one" / name, x, commit_every=7000)
        shutil.copytree(tmp_path / "one" / name, tmp_path / "two" / name)
    script = str(REPO / "tests" / "torchrun_curate.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    single = subprocess.run([sys.executable, script, str(tmp_path / "one")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
           str(tmp_path / "two")]
    returncode, output = run_in_own_group(cmd, env, timeout=600)
    assert returncode == 0, output[-3000:]
    assert output.count("over 2 processes") == 2
    for name in RUNS:
        one, two = tmp_path / "one" / name, tmp_path / "two" / name
        (h1, row1), (h2, row2) = (load_clustering(open_index(d).engine, d) for d in (one, two))
        assert row1.params["processes"] == 1 and row2.params["processes"] == 2
        assert h1.levels == h2.levels == [int(v) for v in RUNS[name][1].split(",")]
        for a, b in [(h1.ids, h2.ids), (h1.labels, h2.labels), (h1.sims, h2.sims), *zip(h1.centroids, h2.centroids),
                     *zip(h1.parents, h2.parents)]:
            assert np.array_equal(a, b), name
