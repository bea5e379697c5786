"""dinoret query / info from the command line, and retrieval of edited copies of real photos."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from dinoret.cli import main
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.retrieval.index import open_index


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def built(tmp_path, image_dir, tiny_weights):
    idx = tmp_path / "idx"
    r = _cli("index", image_dir, "--index", idx, "--weights", tiny_weights, "--workers", 0, "-q")
    assert r.exit_code == 0, r.output
    return idx


def test_query_prints_a_ranked_table(built, image_dir):
    r = _cli("query", image_dir / "img03.jpg", "--index", built, "-k", 3)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"query: {image_dir / 'img03.jpg'}"
    assert lines[1].split() == ["rank", "score", "path"]
    rank, score, path = lines[2].split()
    assert (rank, path) == ("1", str(image_dir / "img03.jpg")) and float(score) == pytest.approx(1, abs=1e-3)
    assert len(lines) == 5


def test_query_json_has_the_documented_shape(built, image_dir):
    queries = [image_dir / "img01.jpg", image_dir / "sub" / "a.png"]
    r = _cli("query", *queries, "--index", built, "-k", 4, "--json", "--no-rerank")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [q["query"] for q in out] == [str(q) for q in queries]
    for q, entry in zip(queries, out):
        assert [h["rank"] for h in entry["results"]] == [1, 2, 3, 4]
        assert set(entry["results"][0]) == {"rank", "id", "path", "score"}
        assert entry["results"][0]["path"] == str(q)
        scores = [h["score"] for h in entry["results"]]
        assert scores == sorted(scores, reverse=True)
    assert open_index(built).record(out[0]["results"][0]["id"]).path == str(queries[0])


def test_info_reports_model_counts_shards_type_and_disk(built):
    r = _cli("info", "--index", built)
    assert r.exit_code == 0, r.output
    for expected in ("model:      tiny (dim 64", "images:     12", "index type: flat", "shards:     1 (12 vectors)", "disk use:"):
        assert expected in r.output
    stats = json.loads(_cli("info", "--index", built, "--json").output)
    assert stats["images"] == 12 and stats["last_run"]["status"] == "done" and stats["disk_bytes"] > 0


def test_query_refuses_when_the_recorded_weights_are_gone(built, image_dir, tiny_weights, tmp_path):
    moved = tmp_path / "moved.pth"
    tiny_weights.rename(moved)
    try:
        r = _cli("query", image_dir / "img01.jpg", "--index", built)
        assert r.exit_code == 2 and "are not at" in r.output and r.output.endswith("(see --weights)\n") and r.output.count("\n") == 1
        r = _cli("query", image_dir / "img01.jpg", "--index", built, "--weights", moved, "-k", 1)
        assert r.exit_code == 0 and str(image_dir / "img01.jpg") in r.output
    finally:
        moved.rename(tiny_weights)


@pytest.mark.slow
def test_edited_copies_of_ukbench_photos_find_their_original(shared_data, vits14_weights, tmp_path):
    photos = sorted((shared_data / "ukbench_first56" / "images").iterdir())
    assert len(photos) == 56
    build_index([shared_data / "ukbench_first56" / "images"], tmp_path / "idx",
                BuildOptions(weights=str(vits14_weights), device="cpu", progress=False, workers=1))
    copies = tmp_path / "copies"
    copies.mkdir()
    for p in photos:  # resized to 70% and JPEG-recompressed at quality 60
        img = Image.open(p).convert("RGB")
        img = img.resize((img.width * 7 // 10, img.height * 7 // 10), Image.Resampling.BILINEAR)
        img.save(copies / p.name, "JPEG", quality=60)
    r = _cli("query", *(copies / p.name for p in photos), "--index", tmp_path / "idx", "-k", 1, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    misses = [(q["query"], q["results"][0]["path"]) for q, p in zip(out, photos) if q["results"][0]["path"] != str(p)]
    assert misses == []
