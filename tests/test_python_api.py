"""The Python API against the CLI on the same index: same hits as ``dinoret query --json``,
same groups and report files as ``dinoret dedup --report``, same figures as ``dinoret info``,
the same index as ``dinoret index``; its errors; and ``import dinoret`` staying light.

The index is the dedup test collection, embedded by the tiny random ViT (see test_dedup.py
for why its threshold is 0.998)."""
from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import dinoret
from dinoret.cli import main
from tests.conftest import REPO, make_image
from tests.test_dedup import THRESHOLD, make_collection, make_other_set


def _cli(*args) -> str:
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_weights):
    """(photos, index dir, test set), the index built by the CLI; a broken JPEG is skipped."""
    root = tmp_path_factory.mktemp("api")
    photos = make_collection(root / "photos")
    (photos / "broken.jpg").write_bytes((photos / "u4.jpg").read_bytes()[:300])
    other = make_other_set(root / "test_set", photos)
    _cli("index", photos, "--index", root / "idx", "--weights", tiny_weights, "--workers", 0, "-q")
    return photos, root / "idx", other


@pytest.fixture(scope="module")
def idx(built):
    return dinoret.open(built[1])


def _hits(hits) -> list[dict]:
    return [{"rank": h.rank, "id": h.id, "path": h.path, "score": h.score} for h in hits]


def _same_hits(api: list[dict], cli: list[dict]) -> None:
    assert [(h["rank"], h["id"], h["path"]) for h in api] == [(h["rank"], h["id"], h["path"]) for h in cli]
    assert [h["score"] for h in api] == pytest.approx([h["score"] for h in cli], abs=1e-6)


# --- search ---------------------------------------------------------------------------------
@pytest.mark.parametrize("rerank", [True, False])
def test_search_gives_the_hits_of_dinoret_query_json(built, idx, rerank):
    photos, index_dir, other = built
    queries = [photos / "a-small.jpg", other / "b-leak.jpg", photos / "u5.jpg"]
    cli = json.loads(_cli("query", *queries, "--index", index_dir, "-k", 4, "--json",
                          "--rerank" if rerank else "--no-rerank"))
    api = idx.search(queries, k=4, rerank=rerank)
    assert len(api) == 3 and all(len(h) == 4 for h in api)
    for a, c in zip(api, cli):
        _same_hits(_hits(a), c["results"])
    _same_hits(_hits(idx.search(str(queries[0]), k=4, rerank=rerank)), cli[0]["results"])  # one query: one list


def test_a_pil_image_an_array_and_an_embedding_search_like_the_file(built, idx):
    path = built[0] / "a-small.jpg"
    by_file = _hits(idx.search(path, k=5))
    img = Image.open(path)
    _same_hits(_hits(idx.search(img, k=5)), by_file)
    _same_hits(_hits(idx.search(np.asarray(img), k=5)), by_file)
    vec = idx.embed(path)
    _same_hits(_hits(idx.search(vec[0], k=5)), by_file)
    batch = idx.search(np.concatenate([vec, vec]), k=5)  # a float (N, dim) array: N queries
    assert len(batch) == 2 and all(_hits(b) == _hits(batch[0]) for b in batch)
    _same_hits(_hits(batch[0]), by_file)


def test_search_by_id_is_the_web_uis_search_by_id(built, idx):
    from dinoret.webui import create_app

    a = idx.record(idx.search(built[0] / "a.jpg", k=1)[0].id)
    client = create_app(built[1], {"TESTING": True}).test_client()
    web = client.post("/api/search", json={"id": a.id, "k": 5}).get_json()["results"]
    api = _hits(idx.search(a.id, k=5))
    assert a.id not in [h["id"] for h in api] and len(api) == 5
    _same_hits(api, [{k: h[k] for k in ("rank", "id", "path", "score")} for h in web])
    mixed = idx.search([a.id, a.path], k=5)  # ids and images in one list
    assert _hits(mixed[0]) == api and mixed[1][0].id == a.id


# --- dedup ------------------------------------------------------------------------------------
def _groups(report: dict) -> list:
    return [(g["group"], g["keeper"], g["reviewed"], g["members"]) for g in report["groups"]]


@pytest.mark.parametrize("cli_args, api_kwargs", [
    ([], {}),
    (["--keep", "oldest", "--no-split", "-k", 3], {"keep": "oldest", "split": False, "k": 3}),
    (["--method", "faiss"], {"method": "faiss"}),
    (["--against", "TEST_SET"], {"against": "TEST_SET"}),
])
def test_dedup_gives_the_groups_of_dinoret_dedup(built, idx, tmp_path, cli_args, api_kwargs):
    photos, index_dir, other = built
    cli_args = [other if a == "TEST_SET" else a for a in cli_args]
    api_kwargs = {k: other if v == "TEST_SET" else v for k, v in api_kwargs.items()}
    _cli("dedup", "--index", index_dir, "--threshold", THRESHOLD, *cli_args, "--report", tmp_path / "cli.json", "-q")
    cli = json.loads((tmp_path / "cli.json").read_text())
    groups = idx.dedup(threshold=THRESHOLD, progress=False, **api_kwargs)
    assert groups.groups and _groups(groups.to_dict()) == _groups(cli)
    assert {k: v for k, v in groups.params.items()} == cli["params"]
    api = json.loads(groups.to_json(tmp_path / "api.json").read_text())
    assert _groups(api) == _groups(cli)
    assert [[m.path for m in g.members] for g in groups] == [[m["path"] for m in g["members"]] for g in cli["groups"]]


def test_report_files_are_the_clis(built, idx, tmp_path):
    index_dir = built[1]
    _cli("dedup", "--index", index_dir, "--threshold", THRESHOLD, "--report", tmp_path / "cli.csv", "-q")
    groups = idx.dedup(threshold=THRESHOLD, progress=False)
    assert groups.to_csv(tmp_path / "api.csv").read_text() == (tmp_path / "cli.csv").read_text()
    rows = list(csv.DictReader((tmp_path / "api.csv").open()))
    assert len(rows) == sum(len(g.members) for g in groups)
    html = groups.to_html(tmp_path / "api.html").read_text()
    assert html.count("data:image/jpeg;base64,") == len(rows) and "<script" not in html


def test_a_writable_index_stores_dedup_runs_as_the_cli_does(built, tmp_path):
    index_dir = built[1]
    with dinoret.open(index_dir, writable=True) as idx:
        groups = idx.dedup(threshold=THRESHOLD, progress=False)
        assert groups.id is not None and idx.reports()[0]["id"] == groups.id
        groups.to_json(tmp_path / "stored.json")
        assert idx.reports()[0]["files"] == [str((tmp_path / "stored.json").resolve())]
        listed = _cli("dedup", "--index", index_dir, "--list")
        assert f"#{groups.id} " in listed and "stored.json" in listed
        _cli("dedup", "--index", index_dir, "--from-report", groups.id, "--report", tmp_path / "cli.json", "-q")
        assert _groups(json.loads((tmp_path / "cli.json").read_text())) == _groups(idx.report(groups.id).to_dict())
        # A reviewer's verdict keeps the group out of later runs, for the CLI too.
        first = groups[0]
        idx.review(first.member_ids(), not_duplicates=True)
        try:
            again = idx.dedup(threshold=THRESHOLD, progress=False)
            assert sorted(first.member_ids()) not in [sorted(g.member_ids()) for g in again]
            assert len(again) == len(groups) - 1
        finally:
            idx.review(first.member_ids(), not_duplicates=False)
    read_only = dinoret.open(index_dir)
    assert read_only.dedup(threshold=THRESHOLD, progress=False).id is None
    with pytest.raises(dinoret.Error, match="read-only"):
        read_only.review(first.member_ids(), not_duplicates=True)


def test_move_to_moves_what_the_cli_would_and_undo_moves_puts_it_back(tmp_path, tiny_weights):
    photos = make_collection(tmp_path / "photos")
    dinoret.index(photos, index=tmp_path / "idx", weights=tiny_weights, workers=0, progress=False)
    out = _cli("dedup", "--index", tmp_path / "idx", "--threshold", THRESHOLD, "--move-to", tmp_path / "dups",
               "--dry-run", "-q")
    cli_plan = sorted(line.split()[2] for line in out.splitlines() if line.startswith("would move"))
    groups = dinoret.open(tmp_path / "idx").dedup(threshold=THRESHOLD, progress=False)
    plan = groups.move_to(tmp_path / "dups", dry_run=True)
    assert sorted(m["src"] for m in plan["moves"]) == cli_plan and plan["manifest"] is None
    assert len(cli_plan) == len(groups.non_keepers())
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()}
    moved = groups.move_to(tmp_path / "dups", progress=False)
    assert {m["status"] for m in moved["moves"]} == {"moved"}
    assert not any(Path(src).exists() for src in cli_plan)
    summary = dinoret.undo_moves(moved["manifest"], progress=False)
    assert summary == {"restored": len(cli_plan), "already_in_place": 0, "problems": []}
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()} == before


# --- info, records, vectors, embeddings ---------------------------------------------------------
def test_info_and_skipped_are_dinoret_info_json(built, idx):
    cli = json.loads(_cli("info", "--index", built[1], "--json", "--skipped"))
    skipped = cli.pop("skipped_files")
    assert json.loads(json.dumps(idx.info(), default=str)) == cli
    assert [{"path": p, "reason": r} for p, r in idx.skipped()] == skipped
    assert [s["path"] for s in skipped] == [str(built[0] / "broken.jpg")]
    assert idx.shard_sizes() == [(0, len(idx))] and cli["images"] == len(idx) == 10


def test_records_and_vectors_are_the_indexed_ones(built, idx):
    cli = json.loads(_cli("query", built[0] / "u6.jpg", "--index", built[1], "-k", 1, "--json"))
    hit = cli[0]["results"][0]
    assert idx.record(hit["id"]).path == hit["path"] == str(built[0] / "u6.jpg")
    vecs = idx.vectors()
    assert vecs.shape == (len(idx), idx.dim) and list(vecs.ids) == sorted(idx.ids())
    full = np.asarray(vecs)
    assert full.dtype == np.float32 and np.allclose(np.linalg.norm(full, axis=1), 1, atol=1e-5)
    assert np.array_equal(vecs[2:5], full[2:5]) and np.array_equal(vecs[-1], full[-1])
    assert np.array_equal(np.concatenate([b for _, b in vecs.chunks(size=3)]), full)
    row = int(np.nonzero(vecs.ids == hit["id"])[0][0])
    assert np.array_equal(vecs.get([hit["id"]])[0], full[row])
    # The stored (float16) vector is the file's embedding, as the API embeds it.
    assert np.allclose(idx.embed(hit["path"])[0], full[row], atol=2e-3)


def test_vectors_read_only_the_rows_asked_for(idx, monkeypatch):
    asked = []
    real = idx._reader.vectors
    monkeypatch.setattr(idx._reader, "vectors", lambda ids: asked.append(len(ids)) or real(ids))
    vecs = idx.vectors()
    assert asked == []
    vecs[3:5], vecs[0], vecs.get(vecs.ids[:1])
    assert asked == [2, 1, 1]
    list(vecs.chunks(size=4))
    assert asked[3:] == [4, 4, 2]


def test_embed_is_the_indexs_embedder(built, idx, tiny_weights):
    files = [built[0] / "a.jpg", built[0] / "b.png", built[0] / "sub" / "c-copy.jpg"]
    vecs = dinoret.embed(files, weights=tiny_weights)
    assert vecs.shape == (3, 64) and vecs.dtype == np.float32
    assert np.array_equal(vecs, idx.embed(files))
    mixed = dinoret.embed([files[0], Image.open(files[1]), np.asarray(Image.open(files[2]))], weights=tiny_weights,
                          batch_size=2)
    assert np.allclose(mixed, vecs, atol=1e-6)
    whole = dinoret.embed(files, weights=tiny_weights, preprocess="whole")
    assert whole.shape == (3, 64) and not np.allclose(whole, vecs)


def test_load_backbone_is_the_indexs_model_in_eval_mode(idx, tiny_weights):
    import torch

    from dinoret.indexer.preprocess import Preprocess

    model = dinoret.load_backbone(tiny_weights)
    assert isinstance(model, torch.nn.Module) and not model.training
    path = idx.record(idx.ids()[0]).path
    with torch.inference_mode():
        out = torch.nn.functional.normalize(model(Preprocess()(Image.open(path)).unsqueeze(0)), dim=-1).numpy()
    assert np.allclose(out, idx.embed(path), atol=1e-5)
    with pytest.raises(dinoret.Error, match="holds tiny, not dinov2_vits14"):
        dinoret.load_backbone("dinov2_vits14", weights=tiny_weights)


def test_index_is_the_run_of_dinoret_index(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    for i in range(5):
        make_image(photos / f"p{i}.jpg", seed=i)
    _cli("index", photos, "--index", tmp_path / "cli", "--weights", tiny_weights, "--workers", 0, "-q")
    idx = dinoret.index(photos, index=tmp_path / "api", weights=tiny_weights, workers=0, progress=False)
    cli = dinoret.open(tmp_path / "cli")
    assert idx.summary.indexed == 5 and idx.identity == cli.identity and idx.info()["index_type"] == "flat"
    assert [idx.record(i).path for i in idx.ids()] == [cli.record(i).path for i in cli.ids()]
    assert np.array_equal(np.asarray(idx.vectors()), np.asarray(cli.vectors()))
    make_image(photos / "p9.jpg", seed=9)
    (photos / "p0.jpg").unlink()
    again = dinoret.index([photos], index=tmp_path / "api", progress=False, workers=0)
    assert (again.summary.indexed, again.summary.unchanged, again.summary.removed) == (1, 4, 1) and len(again) == 5
    with pytest.raises(dinoret.Error, match="preprocess"):
        dinoret.index(photos, index=tmp_path / "api", preprocess="whole", progress=False)


def test_models_are_dinoret_models():
    out = _cli("models")
    assert [m["name"] for m in dinoret.models()] == [line.split()[0] for line in out.splitlines()]


# --- errors ------------------------------------------------------------------------------------
def test_errors_are_dinoret_errors_never_system_exit(built, idx, tmp_path, tiny_weights):
    from dinoret.core.errors import UserError

    assert dinoret.Error is UserError
    bad = [
        ("no index at", lambda: dinoret.open(tmp_path / "nothing")),
        ("cannot read image no-such-file.jpg", lambda: idx.search("no-such-file.jpg")),
        ("cannot read image .*broken.jpg", lambda: idx.search(built[0] / "broken.jpg")),
        ("dimension 64", lambda: idx.search(np.zeros(idx.dim + 1, np.float32))),
        ("uint8", lambda: idx.search(np.zeros((4, 4, 3), np.float32))),
        ("no image with id 1000000000", lambda: idx.search(10**9)),
        ("k must be", lambda: idx.search("x.jpg", k=0)),
        ("no image with id", lambda: idx.record(10**9)),
        ("no stored vector", lambda: idx.vectors().get([10**9])),
        ("keeper policy must be", lambda: idx.dedup(keep="newest")),
        ("method must be", lambda: idx.dedup(method="annoy")),
        ("no such file or folder", lambda: idx.dedup(against=tmp_path / "nothing")),
        ("no dedup report", lambda: idx.report(10**6)),
        ("cannot read weights file", lambda: dinoret.embed(["x.jpg"], weights=built[1] / "catalog.db")),
        ("cannot read image no-such-file.jpg", lambda: dinoret.embed(["no-such-file.jpg"], weights=tiny_weights)),
        ("not an image: object", lambda: dinoret.embed([object()], weights=tiny_weights)),
        ("preprocess mode", lambda: dinoret.embed(["x.jpg"], weights=tiny_weights, preprocess="pad")),
        ("batch_size must be", lambda: dinoret.index(built[0], index=tmp_path / "new", batch_size=0)),
        ("index_type must be", lambda: dinoret.index(built[0], index=tmp_path / "new", index_type="hnsw")),
        ("neither a model name", lambda: dinoret.load_backbone("dinov2_vitz14")),
        ("cannot read manifest", lambda: dinoret.undo_moves(tmp_path / "nothing.json")),
    ]
    for message, call in bad:
        with pytest.raises(dinoret.Error, match=message):
            call()
    assert not (tmp_path / "new").exists()


def test_import_dinoret_and_cli_help_load_neither_torch_nor_faiss():
    code = (
        "import sys\n"
        "import dinoret\n"
        "names = dir(dinoret)\n"
        "from click.testing import CliRunner\n"
        "from dinoret.cli import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(main, ['query', '--help']).exit_code == 0\n"
        "print(sorted(set(dinoret.__all__) - set(names)), [m for m in ('torch', 'faiss') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] []"


def test_info_and_a_no_change_index_run_load_neither_torch_nor_faiss(tmp_path, tiny_weights):
    """The commands call the API, whose handle loads torch and Faiss only when a model or a
    search needs them: ``dinoret info`` and ``dinoret index`` with nothing new need neither."""
    photos, index_dir = tmp_path / "photos", tmp_path / "idx"
    for i in range(3):
        make_image(photos / f"p{i}.jpg", seed=i)
    _cli("index", photos, "--index", index_dir, "--weights", tiny_weights, "--workers", 0, "-q")
    code = (
        "import sys\n"
        "from dinoret.cli import main\n"
        f"main(['info', '--index', {str(index_dir)!r}], standalone_mode=False)\n"
        f"main(['index', {str(photos)!r}, '--index', {str(index_dir)!r}, '-q', '--workers', '0'], standalone_mode=False)\n"
        "print([m for m in ('torch', 'faiss') if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "images:     3" in r.stdout and "indexed 0, unchanged 3" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "[]"
