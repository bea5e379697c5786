"""`dinoret dedup --undo MANIFEST` with an edited or broken manifest: nothing outside the move
folder is ever moved, every file is checked by sha256 first, and a bad manifest is one line."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.core.errors import UserError
from dinoret.retrieval.moves import move_files, plan_moves, undo_moves


@pytest.fixture
def moved(tmp_path):
    """(photos, dups folder, manifest path, manifest dict): a.jpg and sub/b.jpg moved to dups."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"A" * 100)
    (photos / "sub" / "b.jpg").write_bytes(b"B" * 50)
    (photos / "keep.jpg").write_bytes(b"K")
    dest = tmp_path / "dups"
    manifest = move_files(plan_moves([str(photos / "a.jpg"), str(photos / "sub" / "b.jpg")], dest, root=photos), dest)
    assert [e["status"] for e in manifest["moves"]] == ["moved", "moved"]
    path = manifest["manifest"]
    return photos, dest, path, json.loads(open(path).read())


def _write(path, manifest) -> None:
    with open(path, "w") as f:
        json.dump(manifest, f)


def _undo_cli(path, *args):
    r = CliRunner().invoke(main, ["dedup", "--undo", str(path), *args])
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def test_destination_outside_the_move_folder_is_refused(moved, tmp_path):
    photos, dest, path, manifest = moved
    secret = tmp_path / "elsewhere" / "secret.txt"  # a file the manifest's author wants moved
    secret.parent.mkdir()
    secret.write_bytes(b"A" * 100)  # same bytes as a.jpg, so its sha256 matches the entry
    manifest["moves"][0]["dst"] = str(secret)
    _write(path, manifest)
    with pytest.raises(UserError, match="outside"):
        undo_moves(path)
    assert secret.read_bytes() == b"A" * 100 and not (photos / "a.jpg").exists()
    assert (dest / "sub" / "b.jpg").exists()  # refused as a whole: nothing moved
    r = _undo_cli(path)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.output


@pytest.mark.parametrize("dst", ["{dest}/../elsewhere/secret.txt", "{dest}/sub/../../elsewhere/secret.txt",
                                 "sub/b.jpg", "{dest}/./../dups/a.jpg"])
def test_destination_with_dot_dot_or_relative_is_refused(moved, tmp_path, dst):
    photos, dest, path, manifest = moved
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "secret.txt").write_bytes(b"A" * 100)
    manifest["moves"][0]["dst"] = dst.format(dest=dest)
    _write(path, manifest)
    with pytest.raises(UserError):
        undo_moves(path)
    assert (tmp_path / "elsewhere" / "secret.txt").exists() and not (photos / "a.jpg").exists()


def test_a_symlink_out_of_the_move_folder_is_not_followed(moved, tmp_path):
    photos, dest, path, manifest = moved
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.jpg").write_bytes(b"A" * 100)
    # The moved file is replaced by a symlink to a file outside with the same bytes ...
    os.unlink(dest / "a.jpg")
    os.symlink(outside / "a.jpg", dest / "a.jpg")
    summary = undo_moves(path)
    assert summary["restored"] == 1 and any("a.jpg" in p for p in summary["problems"])
    assert (outside / "a.jpg").read_bytes() == b"A" * 100 and not (photos / "a.jpg").exists()
    # ... or a folder of the move folder is a symlink to a folder outside.
    _, dest2, path2, manifest2 = moved_again(tmp_path)
    os.rename(dest2 / "sub", tmp_path / "moved-sub")
    os.symlink(tmp_path / "moved-sub", dest2 / "sub")
    with pytest.raises(UserError, match="outside"):
        undo_moves(path2)
    assert (tmp_path / "moved-sub" / "b.jpg").exists()


def moved_again(tmp_path):
    photos = tmp_path / "photos2"
    (photos / "sub").mkdir(parents=True)
    (photos / "sub" / "b.jpg").write_bytes(b"B" * 50)
    (photos / "c.jpg").write_bytes(b"C")
    dest = tmp_path / "dups2"
    manifest = move_files(plan_moves([str(photos / "sub" / "b.jpg")], dest, root=photos), dest)
    return photos, dest, manifest["manifest"], manifest


def test_source_redirected_elsewhere_is_refused(moved, tmp_path):
    photos, dest, path, manifest = moved
    manifest["moves"][0]["src"] = str(tmp_path / "home" / ".ssh" / "authorized_keys")
    _write(path, manifest)
    with pytest.raises(UserError):
        undo_moves(path)
    assert not (tmp_path / "home").exists() and (dest / "a.jpg").exists()


def test_sha256_is_checked_before_a_file_moves_back(moved):
    photos, dest, path, manifest = moved
    manifest["moves"][1]["sha256"] = "0" * 64  # an edited hash: that file must stay where it is
    _write(path, manifest)
    summary = undo_moves(path)
    assert summary["restored"] == 1 and "sha256" in summary["problems"][0]
    assert (photos / "a.jpg").read_bytes() == b"A" * 100 and (dest / "sub" / "b.jpg").exists()
    assert not (photos / "sub" / "b.jpg").exists()


@pytest.mark.parametrize("text", [
    "not json at all", "[]", "null", '"a string"', "{}",
    '{"kind": "dinoret-dedup-moves"}',
    '{"kind": "dinoret-dedup-moves", "moves": 5}',
    '{"kind": "dinoret-dedup-moves", "moves": [5]}',
    '{"kind": "dinoret-dedup-moves", "moves": [{}]}',
    '{"kind": "dinoret-dedup-moves", "moves": [{"src": 1, "dst": 2, "sha256": 3, "status": 4}]}',
    '{"kind": "dinoret-dedup-moves", "moves": [{"src": "/a", "dst": "/b", "sha256": "x", "status": "moved"}]}',
    '{"kind": "dinoret-dedup-moves", "moves": [{"src": "/a", "dst": "/b", "status": "moved"}]}',
    '{"kind": "dinoret-dedup-moves", "moves": [{"src": ["/a"], "dst": "/b", "sha256": null, "status": null}]}',
    '{"kind": "dinoret-dedup-moves", "moves": ' + "[" * 5000 + "]" * 5000 + "}",
])
def test_malformed_manifest_is_a_one_line_error(tmp_path, text):
    path = tmp_path / "dups" / "dinoret-moves-1.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(UserError):
        undo_moves(path)
    r = _undo_cli(path)
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.output


def test_binary_manifest_is_a_one_line_error(tmp_path):
    path = tmp_path / "m.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    r = _undo_cli(path)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output


def test_quiet_undo_shows_no_progress_bar(moved):
    photos, dest, path, _ = moved
    r = _undo_cli(path, "-q")
    assert r.exit_code == 0 and "restored 2 files" in r.stdout
    assert r.stderr == "", r.stderr
    assert (photos / "a.jpg").exists()


def test_undo_into_a_read_only_folder_is_reported_not_a_traceback(moved, monkeypatch):
    photos, dest, path, _ = moved
    real_link = os.link

    def link(src, dst, *args, **kwargs):  # what a folder without write permission does (even as root)
        if os.path.dirname(dst) == str(photos / "sub"):
            raise PermissionError(13, "Permission denied")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    r = _undo_cli(path, "-q")
    assert r.exit_code == 1 and "b.jpg" in r.stderr and "Permission denied" in r.stderr, r.output
    assert (photos / "a.jpg").exists() and (dest / "sub" / "b.jpg").exists()


# --- --move-to inside the indexed folders ------------------------------------------------

from tests.test_dedup import THRESHOLD, dedup, own_collection, tree  # noqa: E402,F401  (fixture)


@pytest.mark.parametrize("where", ["dups", "sub/dups", "sub", "link-to-photos/dups"])
def test_move_to_inside_the_indexed_folders_is_refused_and_stores_no_report(own_collection, where):  # noqa: F811
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.reports import list_reports

    photos, idx = own_collection
    os.symlink(photos, photos.parent / "link-to-photos")
    before = tree(photos)
    target = photos / where if not where.startswith("link") else photos.parent / where
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(target))
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and "--allow-inside" in r.stderr, r.output
    assert tree(photos) == before
    assert list_reports(open_index(idx).engine) == []
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(target), "--dry-run")
    assert r.exit_code == 2 and list_reports(open_index(idx).engine) == []


def test_allow_inside_moves_into_the_indexed_folder(own_collection):  # noqa: F811
    photos, idx = own_collection
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(photos / "dups"), "--allow-inside")
    assert r.exit_code == 0 and "moved 3 of 3 files" in r.output, r.output
    assert sorted(p.name for p in (photos / "dups").rglob("*.*") if not p.name.endswith(".json")) == [
        "a-small.jpg", "b.png", "c-copy.jpg"]


def test_move_to_outside_is_not_refused(own_collection, tmp_path):  # noqa: F811
    photos, idx = own_collection
    r = dedup("--index", str(idx), "--threshold", str(THRESHOLD), "--move-to", str(tmp_path / "elsewhere"),
              "--dry-run")
    assert r.exit_code == 0 and "dry run: 3 files would move" in r.output, r.output
