"""The index run's hot path: nothing is loaded, hashed or decoded that the run does not need.

- a re-run with nothing changed loads no model and hashes no weights;
- a file whose mtime moved but whose bytes did not is hashed, never decoded, and needs no model;
- each new file is read once (its bytes hashed and decoded from the same read).
"""
from __future__ import annotations

import builtins
import os
from collections import Counter

import pytest
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.retrieval.index import open_index
from tests.conftest import make_image


def _opts(weights=None, **kw) -> BuildOptions:
    return BuildOptions(weights=None if weights is None else str(weights), device="cpu", workers=0, progress=False,
                        batch_size=4, **kw)


def _count_opens(monkeypatch, folder) -> Counter:
    """Counts every open() of a file under ``folder`` from now on (path -> times)."""
    opens: Counter = Counter()
    real_open = builtins.open

    def counting_open(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(str(folder)):
            opens[os.fspath(file)] += 1
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", counting_open)
    return opens


def _forbid_model_and_hashing(monkeypatch) -> None:
    """Make loading any backbone, or hashing any weights file, fail the test."""
    def forbidden(*a, **k):
        raise AssertionError("the run loaded the model or hashed the weights, with nothing to embed")

    import dinoret.core.files
    import dinoret.core.weights
    import dinoret.indexer.embed
    import dinoret.indexer.index_embedder

    monkeypatch.setattr(dinoret.core.weights, "load_backbone", forbidden)
    monkeypatch.setattr(dinoret.core.files, "file_sha256", forbidden)
    monkeypatch.setattr(dinoret.core.weights, "file_sha256", forbidden)
    monkeypatch.setattr(dinoret.indexer.embed, "load_backbone", forbidden)
    monkeypatch.setattr(dinoret.indexer.index_embedder, "file_sha256", forbidden)


def test_no_change_rerun_loads_no_model_and_hashes_no_weights(tmp_path, image_dir, tiny_weights, monkeypatch):
    idx = tmp_path / "idx"
    assert build_index([image_dir], idx, _opts(tiny_weights)).indexed == 12
    _forbid_model_and_hashing(monkeypatch)
    opens = _count_opens(monkeypatch, image_dir)
    s = build_index([image_dir], idx, _opts())
    assert (s.indexed, s.unchanged, s.removed, s.skipped) == (0, 12, 0, [])
    assert not opens  # same size and mtime as indexed: not even opened to sniff the format
    # The same weights named again are recognised by path, size and mtime (recorded with their sha256).
    s = build_index([image_dir], idx, _opts(tiny_weights))
    assert (s.indexed, s.unchanged) == (0, 12)
    # ... and so through the CLI.
    r = CliRunner().invoke(main, ["index", str(image_dir), "--index", str(idx), "-q", "--workers", "0"])
    assert r.exit_code == 0 and "indexed 0, unchanged 12, removed 0, skipped 0" in r.output, r.output


def test_deleted_files_need_no_model_either(tmp_path, image_dir, tiny_weights, monkeypatch):
    idx = tmp_path / "idx"
    build_index([image_dir], idx, _opts(tiny_weights))
    (image_dir / "img04.jpg").unlink()
    _forbid_model_and_hashing(monkeypatch)
    s = build_index([image_dir], idx, _opts())
    assert (s.indexed, s.unchanged, s.removed) == (0, 11, 1)
    assert len(open_index(idx)) == 11


def test_touched_file_is_hashed_but_not_decoded(tmp_path, image_dir, tiny_weights, monkeypatch):
    import dinoret.indexer.file_dataset as fd

    idx = tmp_path / "idx"
    build_index([image_dir], idx, _opts(tiny_weights))
    touched = image_dir / "img02.jpg"
    old_id = open_index(idx).id_for_path(touched)
    os.utime(touched, (1, 1))
    decoded = []
    real = fd.open_image
    monkeypatch.setattr(fd, "open_image", lambda *a, **k: decoded.append(a) or real(*a, **k))
    _forbid_model_and_hashing(monkeypatch)
    s = build_index([image_dir], idx, _opts())
    assert (s.indexed, s.unchanged) == (0, 12) and decoded == []
    reader = open_index(idx)
    assert reader.id_for_path(touched) == old_id and reader.record(old_id).mtime == 1


def test_each_new_file_is_read_once(tmp_path, image_dir, tiny_weights, monkeypatch):
    """Opened twice in all: 16 bytes by discovery (is it an image?), then once for its bytes,
    which are both hashed and decoded."""
    idx = tmp_path / "idx"
    build_index([image_dir / "sub"], idx, _opts(tiny_weights))  # model loaded and weights hashed: not counted
    opens = _count_opens(monkeypatch, image_dir)
    s = build_index([image_dir], idx, _opts(tiny_weights))
    assert s.indexed == 10
    new = {str(image_dir / f"img{i:02d}.jpg") for i in range(10)}
    assert dict(opens) == {p: 2 for p in new}  # the two indexed PNGs in sub/ are not opened


def test_a_weights_file_replaced_in_place_is_refused_when_there_is_work(tmp_path, image_dir, tiny_weights, vits14_weights):
    from dinoret.core.errors import UserError

    weights = tmp_path / "w.pth"
    weights.write_bytes(tiny_weights.read_bytes())
    idx = tmp_path / "idx"
    build_index([image_dir], idx, _opts(weights))
    weights.write_bytes(vits14_weights.read_bytes())  # same path, other bytes (size and mtime differ)
    assert build_index([image_dir], idx, _opts()).indexed == 0  # nothing to embed: nothing checked
    make_image(image_dir / "new.jpg", seed=77)
    with pytest.raises(UserError, match="does not match the index"):
        build_index([image_dir], idx, _opts())
