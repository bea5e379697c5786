"""File discovery: by content, recursive, loop-safe, reporting what it cannot use."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from dinoret.indexer.discover import find_images
from tests.conftest import make_image


def _find(*paths, exclude=()):
    skipped = {}
    found = list(find_images(paths, exclude=exclude, on_skip=lambda p, r: skipped.__setitem__(p.name, r)))
    return found, skipped


def test_finds_images_by_content_recursively_in_sorted_order(tmp_path):
    make_image(tmp_path / "b.jpg", 1)
    make_image(tmp_path / "a" / "deep" / "c.png", 2)
    make_image(tmp_path / "noext", 3, fmt="JPEG")  # an image whatever its name
    make_image(tmp_path / "wrong.png", 4, fmt="JPEG")
    for fmt in ("WEBP", "BMP", "GIF", "TIFF"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"x.{fmt.lower()}", format=fmt)
    (tmp_path / "notes.txt").write_text("hello")
    found, skipped = _find(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a/deep/c.png", "b.jpg", "noext", "wrong.png", "x.bmp", "x.gif", "x.tiff", "x.webp"]
    assert all(p.is_absolute() for p in found)
    assert skipped == {}


def test_reports_bad_files_named_like_images(tmp_path):
    make_image(tmp_path / "good.jpg", 1)
    (tmp_path / "fake.jpg").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "empty.txt").write_bytes(b"")  # not named like an image: ignored silently
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    found, skipped = _find(tmp_path)
    assert [p.name for p in found] == ["good.jpg"]
    assert skipped == {"fake.jpg": "not an image", "empty.png": "empty file", "broken.jpg": "broken symlink"}


def test_symlink_loops_and_duplicates_are_walked_once(tmp_path):
    d = tmp_path / "photos"
    make_image(d / "sub" / "a.jpg", 1)
    os.symlink(d, d / "sub" / "loop")  # points back at an ancestor
    os.symlink(d / "sub", d / "again")  # the same folder under another name
    os.symlink(d / "sub" / "a.jpg", d / "link.jpg")
    os.link(d / "sub" / "a.jpg", d / "hard.jpg")
    found, skipped = _find(d)
    assert len(found) == 1
    assert skipped == {"loop": "symlink loop"}


def test_excluded_folder_is_skipped(tmp_path):
    make_image(tmp_path / "a.jpg", 1)
    make_image(tmp_path / ".dinoret" / "thumb.jpg", 2)
    found, _ = _find(tmp_path, exclude=[tmp_path / ".dinoret"])
    assert [p.name for p in found] == ["a.jpg"]


def test_non_utf8_names_are_reported(tmp_path):
    make_image(tmp_path / "ok.jpg", 1)
    raw = os.fsencode(tmp_path) + b"/caf\xe9.jpg"  # Latin-1 bytes: not valid UTF-8
    with open(raw, "wb") as f:
        f.write((tmp_path / "ok.jpg").read_bytes())
    found, skipped = _find(tmp_path)
    assert [p.name for p in found] == ["ok.jpg"]
    assert list(skipped.values()) == ["non-UTF-8 file name"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_files_and_folders_are_reported(tmp_path):
    make_image(tmp_path / "locked.jpg", 1).chmod(0)
    make_image(tmp_path / "closed" / "x.jpg", 2)
    (tmp_path / "closed").chmod(0)
    try:
        found, skipped = _find(tmp_path)
    finally:
        (tmp_path / "closed").chmod(0o755)
    assert found == []
    assert skipped == {"locked.jpg": "permission denied", "closed": "permission denied"}


def test_permission_errors_are_reported_even_as_root(tmp_path, monkeypatch):
    """The same reasons when the OS refuses (root ignores chmod, so the refusal is simulated)."""
    import builtins
    import errno

    import dinoret.indexer.discover as discover

    make_image(tmp_path / "locked.jpg", 1)
    make_image(tmp_path / "closed" / "x.jpg", 2)
    make_image(tmp_path / "open.jpg", 3)
    real_open, real_scandir = builtins.open, os.scandir

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith("locked.jpg"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    def refusing_scandir(path="."):
        if str(path).endswith("closed"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(builtins, "open", refusing_open)
    monkeypatch.setattr(discover.os, "scandir", refusing_scandir)
    found, skipped = _find(tmp_path)
    assert [p.name for p in found] == ["open.jpg"]
    assert skipped == {"locked.jpg": "permission denied", "closed": "permission denied"}


def test_fifo_does_not_block(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")
    make_image(tmp_path / "a.jpg", 1)
    found, _ = _find(tmp_path)
    assert [p.name for p in found] == ["a.jpg"]


def test_single_files_and_missing_paths(tmp_path):
    f = make_image(tmp_path / "a.jpg", 1)
    found, skipped = _find(f, tmp_path / "nope")
    assert found == [f]
    assert skipped == {"nope": "not found"}
