"""Curation and training through the Python API against the CLI on the same data: the same
clustering as ``dinoret curate clusters``, the same selection files as ``curate sample`` and
``curate retrieve`` (with ``--exclude``), the same backbones as ``dinoret train`` and
``dinoret distill``; and their errors are ``dinoret.Error``.

Curation runs on indexes of planted vectors (tests/vector_index.py) and, where images must
be embedded, on the dedup test collection with the tiny random ViT (test_dedup.py: its
copies are the ones above cosine 0.998)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import dinoret
from dinoret.cli import main
from dinoret.retrieval.clusterings import load_clustering
from tests.conftest import make_image
from tests.test_dedup import THRESHOLD, make_collection, make_other_set
from tests.test_distill import STUDENT, TEACHER_RUN
from tests.test_train_parts import one_thread  # noqa: F401 (autouse fixture)
from tests.vector_index import planted, vector_index


def _cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _clustering(index_dir):
    reader = dinoret.open(index_dir).reader
    return load_clustering(reader.engine, reader.root)


def test_curate_clusters_and_sample_are_the_clis(tmp_path):
    x, _, _ = planted([200, 100, 50, 25, 12, 6], seed=2)
    index_dir = vector_index(tmp_path / "idx", x)
    _cli("curate", "clusters", "--index", index_dir, "--clusters", "6,2", "--resample", "1", "--seed", 4, "-q")
    (h_cli, row_cli) = _clustering(index_dir)
    idx = dinoret.open(index_dir, writable=True)
    done = idx.curate_clusters([6, 2], resample=1, seed=4, recluster=True, progress=False)
    (h_api, row_api) = _clustering(index_dir)
    assert row_api.id != row_cli.id and row_api.params == row_cli.params
    assert np.array_equal(h_api.labels, h_cli.labels) and np.array_equal(h_api.sims, h_cli.sims)
    assert all(np.array_equal(a, b) for a, b in zip(h_api.centroids, h_cli.centroids))
    assert done["action"] == "clustered" and done["images"] == len(x) and done["levels"] == [6, 2]
    assert [s.tolist() for s in done["sizes"]] == [h_api.sizes(level).tolist() for level in (1, 2)]
    assert idx.curate_clusters(progress=False)["action"] == "up to date"

    for name, strategy in (("random.json", "random"), ("closest.csv", "closest")):
        _cli("curate", "sample", "--index", index_dir, "--target", 40, "--strategy", strategy, "--seed", 3,
             "--out", tmp_path / f"cli-{name}")
        pick = idx.curate_sample(40, strategy=strategy, seed=3, progress=False)
        assert pick.write(tmp_path / f"api-{name}").read_text() == (tmp_path / f"cli-{name}").read_text()
        assert len(pick) == 40 and pick.levels == [6, 2] and pick.notes == []


@pytest.fixture(scope="module")
def photos_index(tmp_path_factory, tiny_weights):
    """(index dir, the other set), the dedup test collection indexed by the CLI."""
    root = tmp_path_factory.mktemp("api_curate")
    photos = make_collection(root / "photos")
    other = make_other_set(root / "test_set", photos)
    _cli("index", photos, "--index", root / "idx", "--weights", tiny_weights, "--workers", 0, "-q")
    return root / "idx", other


@pytest.mark.parametrize("mode", ["sample", "cluster"])
def test_curate_retrieve_with_exclude_is_the_clis(photos_index, tmp_path, mode):
    index_dir, other = photos_index
    idx = dinoret.open(index_dir, writable=True)
    idx.curate_clusters([3], recluster=True, progress=False)
    seeds = tmp_path / "seeds"
    for i in range(2):
        make_image(seeds / f"s{i}.jpg", seed=300 + i)
    args = ["--seeds", seeds, "--mode", mode, "-k", 2, "--min-hits", 1, "--exclude", other,
            "--exclude-threshold", THRESHOLD]
    out = _cli("curate", "retrieve", "--index", index_dir, *args, "--out", tmp_path / "cli.json", "-q")
    pick = idx.curate_retrieve(seeds, mode=mode, k=2, min_hits=1, exclude=other, exclude_threshold=THRESHOLD,
                               progress=False)
    cli = json.loads((tmp_path / "cli.json").read_text())
    api = json.loads(pick.write(tmp_path / "api.json").read_text())
    assert api == cli and len(pick) > 0
    assert pick.excluded and (tmp_path / "api.excluded.csv").read_text() == (tmp_path / "cli.excluded.csv").read_text()
    assert f"{len(pick.excluded)} pool images excluded" in out
    report = pick.to_html(tmp_path / "api.html").read_text()
    assert "<script" not in report and report.count("data:image/jpeg;base64,") > 0
    assert pick.link_to(tmp_path / "linked")[0] == len(pick)


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    wa, wb = wa.get("state_dict", wa), wb.get("state_dict", wb)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_train_and_distill_are_the_clis(tmp_path):
    data = tmp_path / "photos"
    for i in range(8):
        make_image(data / f"{i:02d}.jpg", seed=i, size=(120, 96))
    sets = [a for s in TEACHER_RUN for a in ("--set", s)]
    _cli("train", data, "--output", tmp_path / "cli", *sets, "--device", "cpu", "-q")
    seen = []
    run = dinoret.train(data, output=tmp_path / "api", set=TEACHER_RUN, device="cpu", progress=False,
                        on_files=lambda files, bad: seen.append((len(files), bad)))
    assert seen == [(8, [])] and run["iterations"] == run["total_iterations"] == 2
    assert run["backbone"] == tmp_path / "api" / "teacher_backbone.pth"
    assert _same_weights(run["backbone"], tmp_path / "cli" / "teacher_backbone.pth")

    student = [s for s in STUDENT if not s.startswith(("optim.epochs", "train.OFFICIAL"))] + [
        "optim.epochs=1", "train.OFFICIAL_EPOCH_LENGTH=2"]
    sets = [a for s in student for a in ("--set", s)]
    _cli("distill", data, "--teacher", tmp_path / "cli", "--output", tmp_path / "cli-s", *sets, "-q")
    run = dinoret.distill([data], output=tmp_path / "api-s", teacher=tmp_path / "api", set=student, progress=False)
    assert run["iterations"] == 2 and run["backbone"].name == "student_backbone.pth"
    assert _same_weights(run["backbone"], tmp_path / "cli-s" / "student_backbone.pth")


def test_curation_and_training_errors_are_dinoret_errors(photos_index, tmp_path):
    index_dir, other = photos_index
    idx = dinoret.open(index_dir)
    bad = [
        ("open read-only", lambda: idx.curate_clusters([2])),
        ("finest level first", lambda: dinoret.open(index_dir, writable=True).curate_clusters([2, 4], recluster=True)),
        ("strategy must be", lambda: idx.curate_sample(2, strategy="best")),
        ("mode must be", lambda: idx.curate_retrieve(other, mode="nearest")),
        ("no such file or folder", lambda: idx.curate_retrieve(tmp_path / "nothing")),
        ("must end in .txt, .csv or .json", lambda: idx.curate_retrieve(other, k=1).write(tmp_path / "x.parquet")),
        ("give at least one folder", lambda: dinoret.train(output=tmp_path / "run")),
        ("no such file or folder", lambda: dinoret.train(tmp_path / "nothing", output=tmp_path / "run")),
        ("give the teacher", lambda: dinoret.distill(other, output=tmp_path / "run2")),
        ("student must be", lambda: dinoret.distill(other, output=tmp_path / "run2", teacher="x", student="vit_tiny")),
    ]
    for message, call in bad:
        with pytest.raises(dinoret.Error, match=message):
            call()
