"""Moving non-keepers aside and back: byte-for-byte restore, no overwrite, crash-safe manifest."""
import hashlib
import json
import os

import pytest

from dinoret.retrieval.moves import move_files, plan_moves, read_manifest, undo_moves
from dinoret.core.errors import UserError


def tree(root):
    """relative path -> sha256 of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for rel, data in {"a.jpg": b"A" * 100, "sub/b.jpg": b"B" * 50, "sub/deep/c.png": b"C" * 7, "keep.jpg": b"K"}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_move_keeps_relative_paths_and_undo_restores_bytes(tmp_path, photos):
    before = tree(photos)
    mtime = os.stat(photos / "sub" / "b.jpg").st_mtime
    srcs = [str(photos / p) for p in ("a.jpg", "sub/b.jpg", "sub/deep/c.png")]
    plan = plan_moves(srcs, tmp_path / "dups", root=photos)
    assert [d for _, d in plan] == [str(tmp_path / "dups" / p) for p in ("a.jpg", "sub/b.jpg", "sub/deep/c.png")]
    manifest = move_files(plan, tmp_path / "dups")
    assert [e["status"] for e in manifest["moves"]] == ["moved"] * 3
    assert tree(photos) == {"keep.jpg": before["keep.jpg"]}
    assert os.stat(tmp_path / "dups" / "sub" / "b.jpg").st_mtime == mtime
    on_disk = read_manifest(manifest["manifest"])
    assert on_disk["moves"][0]["sha256"] == before["a.jpg"]
    summary = undo_moves(manifest["manifest"])
    assert summary == {"restored": 3, "already_in_place": 0, "problems": []}
    assert tree(photos) == before
    assert json.loads(open(manifest["manifest"]).read())["undone"]


def test_dry_run_moves_nothing(tmp_path, photos):
    before = tree(photos)
    manifest = move_files(plan_moves([str(photos / "a.jpg")], tmp_path / "dups"), tmp_path / "dups", dry_run=True)
    assert manifest["manifest"] is None and manifest["moves"][0]["status"] == "planned"
    assert tree(photos) == before and not (tmp_path / "dups").exists()


def test_never_overwrites_either_way(tmp_path, photos):
    dest = tmp_path / "dups"
    (dest / "sub").mkdir(parents=True)
    (dest / "sub" / "b.jpg").write_bytes(b"someone else's file")
    plan = plan_moves([str(photos / "a.jpg"), str(photos / "sub" / "b.jpg")], dest, root=photos)
    manifest = move_files(plan, dest)
    assert [e["status"] for e in manifest["moves"]] == ["moved", "skipped: destination exists"]
    assert (photos / "sub" / "b.jpg").read_bytes() == b"B" * 50
    assert (dest / "sub" / "b.jpg").read_bytes() == b"someone else's file"
    (photos / "a.jpg").write_bytes(b"new file at the old place")
    summary = undo_moves(manifest["manifest"])
    assert summary["restored"] == 0 and "something is there again" in summary["problems"][0]
    assert (photos / "a.jpg").read_bytes() == b"new file at the old place"
    assert (dest / "a.jpg").read_bytes() == b"A" * 100


def test_undo_refuses_changed_files_and_finishes_after_a_crash(tmp_path, photos):
    dest = tmp_path / "dups"
    manifest = move_files(plan_moves([str(photos / "a.jpg"), str(photos / "keep.jpg")], dest, root=photos), dest)
    (dest / "a.jpg").write_bytes(b"edited after the move")
    summary = undo_moves(manifest["manifest"])
    assert summary["restored"] == 1 and "sha256 differs" in summary["problems"][0]
    assert not (photos / "a.jpg").exists()
    # A crash after the manifest was written but before a file moved: undo finds it in place.
    m = read_manifest(manifest["manifest"])
    m["moves"][1]["status"] = "planned"
    with open(manifest["manifest"], "w") as f:
        json.dump(m, f)
    assert undo_moves(manifest["manifest"])["already_in_place"] == 1


def test_bad_manifest_and_dest_equal_to_root(tmp_path, photos):
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(UserError, match="not a dinoret"):
        undo_moves(bad)
    with pytest.raises(UserError):
        plan_moves([str(photos / "a.jpg")], photos)
