"""`dinoret curate retrieve` (sample- and cluster-based), `--exclude`, selection files as
training data, and the HTML report, on indexes of planted vectors (tests/vector_index.py)
and, for the embedding path, a real index of generated photos (tiny random ViT)."""
from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinoret.cli import main
from tests.conftest import make_image
from tests.vector_index import IDENTITY, planted, unit, vector_index

SIZES = [30, 30, 30, 30, 30]


def _cli(*args):
    return CliRunner().invoke(main, ["curate", *map(str, args)])


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector at exactly cosine ``cos`` from unit vector ``v``."""
    u = rng.standard_normal(v.shape).astype(np.float32)
    u -= (u @ v) * v
    u /= np.linalg.norm(u)
    return unit(cos * v + np.sqrt(1 - cos**2) * u)


@pytest.fixture
def pool(tmp_path):
    x, truth, centres = planted(SIZES, noise=0.05, seed=11)
    return vector_index(tmp_path / "pool", x), x, truth, centres


def test_sample_retrieval_finds_each_seeds_planted_neighbours(pool, tmp_path) -> None:
    idx, x, truth, _ = pool
    rng = np.random.default_rng(0)
    targets = [3, 40, 77, 140]  # pool rows (= ids) the seeds are planted next to
    seeds = np.stack([_near(x[t], 0.999, rng) for t in targets])
    seed_idx = vector_index(tmp_path / "seeds", seeds, paths=[f"/seeds/s{i}.jpg" for i in range(4)])
    out = tmp_path / "near.csv"
    r = _cli("retrieve", "--index", idx, "--seeds", seed_idx, "--mode", "sample", "-k", 1, "--out", out)
    assert r.exit_code == 0, r.output
    rows = _rows(out)
    assert sorted(int(row["id"]) for row in rows) == targets
    for row in rows:
        assert row["reason"] == "sample-retrieval" and float(row["similarity"]) > 0.99
        assert row["seed_path"] == f"/seeds/s{targets.index(int(row['id']))}.jpg"
        assert row["seed_id"] == str(targets.index(int(row["id"])))  # the seed's id in its own index
    # k=4: every seed's 4 nearest are in its planted cluster; collisions counted once.
    r = _cli("retrieve", "--index", idx, "--seeds", seed_idx, "-k", 4, "--out", out)
    assert r.exit_code == 0 and "16 pool images retrieved by 4 seeds" in r.output, r.output
    found = [int(row["id"]) for row in _rows(out)]
    assert len(found) == 16 and {truth[i] for i in found} == {truth[t] for t in targets}


def test_cluster_retrieval_takes_clusters_with_enough_seeds(pool, tmp_path) -> None:
    idx, x, truth, centres = pool
    assert _cli("clusters", "--index", idx, "--clusters", "5", "-q").exit_code == 0
    rng = np.random.default_rng(1)
    # 4 seeds in cluster 1, 2 in cluster 3: with --min-hits 3 only cluster 1 is used.
    seeds = np.stack([_near(centres[1], 0.97, rng) for _ in range(4)] + [_near(centres[3], 0.97, rng) for _ in range(2)])
    seed_idx = vector_index(tmp_path / "seeds", seeds)
    out = tmp_path / "more.json"
    r = _cli("retrieve", "--index", idx, "--seeds", seed_idx, "--mode", "cluster", "--min-hits", 3, "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    ids = [im["id"] for im in doc["images"]]
    assert sorted(ids) == np.flatnonzero(truth == 1).tolist()
    assert {im["reason"] for im in doc["images"]} == {"cluster-retrieval"}
    assert doc["params"]["clusters_used"] == 1 and doc["params"]["clusters_with_seeds"] == 2
    r = _cli("retrieve", "--index", idx, "--seeds", seed_idx, "--mode", "cluster", "--min-hits", 2,
             "--per-cluster", 5, "--strategy", "closest", "--out", out)
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    by_cluster = np.bincount([truth[im["id"]] for im in doc["images"]], minlength=5)
    assert by_cluster.tolist() == [0, 5, 0, 5, 0]


def test_seeds_from_another_model_are_refused(pool, tmp_path) -> None:
    idx, x, _, _ = pool
    other = vector_index(tmp_path / "other", x[:3], identity=dict(IDENTITY, weights_sha256="f" * 64))
    r = _cli("retrieve", "--index", idx, "--seeds", other, "--out", tmp_path / "a.txt")
    assert r.exit_code == 2 and "(see --seeds)" in r.output and "not comparable" in r.output
    assert "Traceback" not in r.output
    r = _cli("retrieve", "--index", idx, "--seeds", other, "--mode", "cluster", "--out", tmp_path / "a.txt")
    assert r.exit_code == 2 and "no clustering yet" in r.output


def test_exclude_drops_whole_components_and_says_why(tmp_path) -> None:
    rng = np.random.default_rng(5)
    base = unit(rng.standard_normal((40, 32)))  # unrelated images (cosine ~0 to each other)
    e = base[0]
    p1 = _near(e, 0.97, rng)  # a near copy of the eval image
    p2 = _near(p1, 0.95, rng)  # a copy of p1, further from e: reached through p1
    p3 = _near(p2, 0.95, rng)  # ... and of p2: the chain goes on
    x = np.concatenate([base[1:], np.stack([p1, p2, p3, e])])  # the last one: an exact copy of e
    n = len(x)
    hashes = [f"{i:032x}" for i in range(n - 1)] + ["e" * 32]
    idx = vector_index(tmp_path / "pool", x, hashes=hashes)
    ev = vector_index(tmp_path / "eval", e[None], paths=["/eval/e.jpg"], hashes=["e" * 32])
    assert _cli("clusters", "--index", idx, "--clusters", "6", "-q").exit_code == 0
    out = tmp_path / "train.csv"
    r = _cli("sample", "--index", idx, "--target", n - 4, "--out", out, "--exclude", ev, "--exclude-threshold", 0.93)
    assert r.exit_code == 0, r.output
    chosen = {int(row["id"]) for row in _rows(out)}
    dropped = {n - 4, n - 3, n - 2, n - 1}  # p1, p2, p3 and the exact copy
    assert chosen == set(range(n)) - dropped
    side = {int(row["id"]): row for row in _rows(tmp_path / "train.excluded.csv")}
    assert set(side) == dropped
    assert side[n - 1]["reason"] == "exact" and side[n - 1]["via_id"] == ""
    assert side[n - 4]["via_id"] == "" and float(side[n - 4]["similarity"]) == pytest.approx(0.97, abs=2e-3)
    assert side[n - 2]["via_id"] == str(n - 3) and side[n - 2]["excluded_path"] == "/eval/e.jpg"
    assert "4 pool images excluded" in r.output
    # Too few images left for the target: a one-line error.
    r = _cli("sample", "--index", idx, "--target", n - 3, "--out", out, "--exclude", ev, "--exclude-threshold", 0.93)
    assert r.exit_code == 2 and "4 excluded" in r.output
    # At 0.96 the chain breaks after p1 (p1-p2 is 0.95): only p1 and the exact copy go, and
    # retrieval around the eval image itself then finds p2 first.
    r = _cli("retrieve", "--index", idx, "--seeds", ev, "-k", 1, "--out", out, "--exclude", ev,
             "--exclude-threshold", 0.96)
    assert r.exit_code == 0, r.output
    assert {int(row["id"]) for row in _rows(tmp_path / "train.excluded.csv")} == {n - 4, n - 1}
    assert [int(row["id"]) for row in _rows(out)] == [n - 3]


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory, tiny_weights):
    """12 generated photos indexed with the tiny random ViT, and a seed folder of smaller
    JPEG copies of three of them. (With this random ViT unrelated photos score up to ~0.998
    and the copies ~0.9999, hence the high thresholds below.)"""
    from dinoret.indexer.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("curate_photos")
    photos = root / "photos"
    for i in range(12):
        make_image(photos / f"p{i:02d}.jpg", seed=200 + i)
    seeds = root / "seeds"
    seeds.mkdir()
    for i in (2, 5, 9):
        with Image.open(photos / f"p{i:02d}.jpg") as im:
            im.resize((160, 120)).save(seeds / f"copy{i}.jpg", quality=80)
    build_index([photos], root / "idx", BuildOptions(weights=str(tiny_weights), device="cpu", workers=0,
                                                     progress=False, batch_size=8))
    return root


def test_seed_images_are_embedded_with_the_index_model(photo_index, tmp_path) -> None:
    out = tmp_path / "near.txt"
    r = _cli("retrieve", "--index", photo_index / "idx", "--seeds", photo_index / "seeds", "-k", 1, "--out", out, "-q")
    assert r.exit_code == 0, r.output
    assert sorted(out.read_text().splitlines()) == [str(photo_index / "photos" / f"p{i:02d}.jpg") for i in (2, 5, 9)]


def test_selection_and_report_and_links(photo_index, tmp_path) -> None:
    idx = photo_index / "idx"
    assert _cli("clusters", "--index", idx, "--clusters", "4,2", "--resample", "1", "-q").exit_code == 0
    out, report = tmp_path / "pick.json", tmp_path / "pick.html"
    r = _cli("sample", "--index", idx, "--target", 6, "--out", out, "--report", report, "--link-to", tmp_path / "links",
             "--exclude", photo_index / "seeds", "--exclude-threshold", 0.999, "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == 6
    excluded = {d["path"] for d in doc["excluded"]}
    assert excluded == {str(photo_index / "photos" / f"p{i:02d}.jpg") for i in (2, 5, 9)}
    assert not excluded & {im["path"] for im in doc["images"]}
    links = sorted((tmp_path / "links").iterdir())
    assert len(links) == 6 and all(p.is_symlink() and p.resolve().is_file() for p in links)
    html = report.read_text()
    assert html.count('class="cluster"') == 6  # 2 top clusters + 4 leaves
    assert html.count("data:image/jpeg;base64,") >= 6 and "Excluded by --exclude" in html
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html)  # nothing outside the file
    assert "copy2.jpg" in html  # the excluded image each pool image copies is shown


def test_a_selection_file_is_training_data(photo_index, tmp_path) -> None:
    from dinoret.api.training import gather_files

    pick = tmp_path / "pick.csv"
    assert _cli("clusters", "--index", photo_index / "idx", "--clusters", "3", "--recluster", "-q").exit_code == 0
    assert _cli("sample", "--index", photo_index / "idx", "--target", 5, "--out", pick).exit_code == 0
    listed = [row["path"] for row in _rows(pick)]
    files, skipped = gather_files([str(pick)], tmp_path / "run")
    assert files == listed and not skipped
    # A hand-made text file with a relative path, a comment and a missing file; plus a folder.
    (tmp_path / "imgs").mkdir()
    shutil.copy(listed[0], tmp_path / "imgs" / "a.jpg")
    (tmp_path / "mine.txt").write_text("# my picks\nimgs/a.jpg\nimgs/gone.jpg\n")
    files, skipped = gather_files([str(tmp_path / "mine.txt"), str(photo_index / "seeds")], tmp_path / "run")
    assert files[0] == str(tmp_path / "imgs" / "a.jpg") and len(files) == 4
    assert skipped == [(str(tmp_path / "imgs" / "gone.jpg"), "listed in mine.txt but not found")]
