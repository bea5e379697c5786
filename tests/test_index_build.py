"""Index runs: incremental add / change / delete, bad input, refusing a different model."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dinoret.api.handle import Index
from dinoret.cli import main
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.retrieval.index import open_index
from tests.conftest import make_image


def _opts(weights, **kw) -> BuildOptions:
    return BuildOptions(weights=str(weights), device="cpu", workers=0, progress=False, batch_size=4, **kw)


def _paths(reader) -> list[str]:
    return sorted(r.path for r in reader.records(reader.ids()))


def test_first_run_indexes_everything_and_search_finds_each_image(tmp_path, image_dir, tiny_weights):
    s = build_index([image_dir], tmp_path / "idx", _opts(tiny_weights))
    assert (s.indexed, s.unchanged, s.removed, s.skipped) == (12, 0, 0, [])
    reader = open_index(tmp_path / "idx")
    assert len(reader) == 12 and reader.stats()["index_type"] == "flat"
    ids = reader.ids()
    vecs = reader.vectors(ids)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    scores, found = reader.search(vecs, k=3)
    assert (found[:, 0] == ids).all()
    assert scores[:, 0] == pytest.approx(1, abs=1e-4)
    rec = reader.record(int(ids[0]))
    assert reader.id_for_path(rec.path) == rec.id
    assert (rec.width, rec.height) == Image.open(rec.path).size
    hits = Index(reader).search(image_dir / "sub" / "b.png", k=2)
    assert hits[0].path == str(image_dir / "sub" / "b.png") and hits[0].rank == 1


def test_second_run_embeds_only_new_or_changed_and_drops_deleted(tmp_path, image_dir, tiny_weights):
    idx = tmp_path / "idx"
    build_index([image_dir], idx, _opts(tiny_weights))
    before = open_index(idx)
    old_id = before.id_for_path(image_dir / "img01.jpg")
    touched_id = before.id_for_path(image_dir / "img02.jpg")
    make_image(image_dir / "new.jpg", 50)  # new
    make_image(image_dir / "img01.jpg", 51)  # changed content
    os.utime(image_dir / "img02.jpg", (1, 1))  # touched: same bytes
    (image_dir / "img03.jpg").unlink()  # deleted
    s = build_index([image_dir], idx, _opts(tiny_weights))
    assert (s.indexed, s.unchanged, s.removed) == (2, 10, 1)
    reader = open_index(idx)
    assert len(reader) == 12
    assert str(image_dir / "img03.jpg") not in _paths(reader)
    assert reader.id_for_path(image_dir / "img02.jpg") == touched_id
    new_id = reader.id_for_path(image_dir / "img01.jpg")
    assert new_id != old_id and reader.record(old_id) is None
    _, found = reader.search(reader.vectors(reader.ids()), k=1)
    assert (found[:, 0] == reader.ids()).all()  # deleted / replaced vectors are out of the shards
    s = build_index([image_dir], idx, _opts(tiny_weights))
    assert (s.indexed, s.unchanged, s.removed) == (0, 12, 0)


def test_runs_over_other_folders_leave_existing_images(tmp_path, image_dir, tiny_weights):
    idx = tmp_path / "idx"
    build_index([image_dir / "sub"], idx, _opts(tiny_weights))
    other = tmp_path / "other"
    make_image(other / "x.jpg", 77)
    build_index([other], idx, _opts(tiny_weights))
    assert _paths(open_index(idx)) == sorted(str(p) for p in (image_dir / "sub" / "a.png", image_dir / "sub" / "b.png", other / "x.jpg"))


def _bad_inputs(d):
    good = make_image(d / "good.jpg", 1)
    data = good.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "text.png").write_text("hello, not a picture")
    (d / "zero.jpg").write_bytes(b"")
    Image.new("1", (10_000, 9_000)).save(d / "bomb.png")  # 90 Mpixel, tiny file
    os.symlink(d / "gone.jpg", d / "dangling.jpg")
    with open(os.fsencode(d) + b"/bad\xffname.jpg", "wb") as f:
        f.write(data)
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(buf, "PNG")
    (d / "png_named.jpg").write_bytes(buf.getvalue())


def test_bad_input_is_skipped_with_reasons_and_listed(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    photos.mkdir()
    _bad_inputs(photos)
    s = build_index([photos], tmp_path / "idx", _opts(tiny_weights))
    assert s.indexed == 2  # good.jpg and the PNG with a .jpg name
    reasons = {os.path.basename(p): r for p, r in s.skipped}
    assert reasons == {
        "truncated.jpg": "truncated image",
        "text.png": "not an image",
        "zero.jpg": "empty file",
        "bomb.png": "decompression bomb",
        "dangling.jpg": "broken symlink",
        "bad\\xffname.jpg": "non-UTF-8 file name",
    }
    result = CliRunner().invoke(main, ["info", "--skipped", "--index", str(tmp_path / "idx")])
    assert result.exit_code == 0
    assert "decompression bomb\t" in result.output and "bad\\xffname.jpg" in result.output
    # A file that becomes unreadable is dropped from the index and listed.
    (photos / "good.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 10)
    s = build_index([photos], tmp_path / "idx", _opts(tiny_weights))
    assert len(open_index(tmp_path / "idx")) == 1
    assert str(photos / "good.jpg") in dict(s.skipped) and s.removed == 0


def test_whole_preprocessing_mixed_shapes_and_several_shards(tmp_path, image_dir, tiny_weights):
    make_image(image_dir / "tall.jpg", 60, size=(150, 400))
    s = build_index([image_dir], tmp_path / "idx", _opts(tiny_weights, preprocess="whole", shard_size=5))
    assert s.indexed == 13
    reader = open_index(tmp_path / "idx")
    assert reader.identity["preprocess"]["mode"] == "whole"
    assert [n for _, n in reader.shard_sizes()] == [5, 5, 3]
    ids = reader.ids()
    _, found = reader.search(reader.vectors(ids), k=1)
    assert (found[:, 0] == ids).all()  # every shard is searched
    hits = Index(reader).search(image_dir / "tall.jpg", k=1)
    assert hits[0].path == str(image_dir / "tall.jpg") and hits[0].score == pytest.approx(1, abs=1e-3)


def test_pixel_hash_matches_across_lossless_formats(tmp_path, tiny_weights):
    d = tmp_path / "photos"
    img = Image.open(make_image(d / "a.png", 5)).convert("RGB")
    img.save(d / "a.bmp")
    img.save(d / "a.tiff")
    build_index([d], tmp_path / "idx", _opts(tiny_weights))
    reader = open_index(tmp_path / "idx")
    recs = reader.records(reader.ids())
    assert len({r.pixel_hash for r in recs}) == 1 and len({r.content_hash for r in recs}) == 3
    assert sorted(map(len, reader.ids_by_content_hash().values())) == [1, 1, 1]


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_refuses_a_different_model_or_preprocessing(tmp_path, image_dir, tiny_weights, vits14_weights):
    idx = tmp_path / "idx"
    r = _cli("index", image_dir, "--index", idx, "--weights", tiny_weights, "--workers", 0, "-q")
    assert r.exit_code == 0, r.output
    assert "indexed 12, unchanged 0, removed 0, skipped 0" in r.output
    for extra in (["--weights", vits14_weights], ["--model", "dinov2_vitb14"], ["--preprocess", "whole"]):
        r = _cli("index", image_dir, "--index", idx, "-q", *extra)
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert "Traceback" not in r.output
    r = _cli("query", image_dir / "img00.jpg", "--index", idx, "--weights", vits14_weights)
    assert r.exit_code == 2 and "does not match the index" in r.output


@pytest.mark.parametrize("args, message", [
    (["query", "{img}", "--index", "{tmp}/nothing"], "no index at"),
    (["info", "--index", "{tmp}/nothing"], "no index at"),
    (["index", "{dir}", "--index", "{tmp}/i1", "--model", "dinov2_vitq14"], "unknown model"),
    (["index", "{dir}", "--index", "{tmp}/i2", "--model", "dinov2_vits14"], "no weights for dinov2_vits14"),
    (["index", "{dir}", "--index", "{tmp}/i3", "--weights", "{tmp}/missing.pth"], "weights file not found"),
    (["index", "{tmp}/nowhere", "--index", "{tmp}/i4"], "no such file or folder"),
])
def test_user_errors_are_one_line(tmp_path, image_dir, args, message):
    fill = {"tmp": tmp_path, "dir": image_dir, "img": image_dir / "img00.jpg"}
    r = CliRunner().invoke(main, [a.format(**fill) for a in args])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and message in r.output and r.output.count("\n") == 1, r.output
