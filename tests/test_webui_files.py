"""The web UI shows every file the indexer accepts (one decoder), and answers with the status
that says whose fault a failure is: 404 not found, 400 bad request, 503 a damaged index."""
from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from tests.conftest import make_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def pnm_index(tmp_path_factory, tiny_weights):
    """An index of a JPEG, a binary PPM and a plain-text PGM (netpbm, which browsers cannot show)."""
    from dinoret.indexer.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("pnm")
    photos = root / "photos"
    make_image(photos / "a.jpg", seed=1)
    Image.open(make_image(root / "src.png", seed=2)).save(photos / "b.ppm")
    (photos / "c.pgm").write_bytes(b"P2\n3 2\n255\n0 128 255\n255 128 0\n")
    s = build_index([photos], root / "index", BuildOptions(weights=str(tiny_weights), workers=0, progress=False))
    assert (s.indexed, s.skipped) == (3, [])
    return root / "index", photos


def _app(index_dir):
    from dinoret.webui import create_app

    return create_app(index_dir, {"TESTING": True})


@pytest.fixture
def index_copy(pnm_index, tmp_path):
    """A copy of the module's index (its own LMDB environment and thumbnail cache) to damage."""
    copy = tmp_path / "index"
    shutil.copytree(pnm_index[0], copy)
    return copy


def test_an_indexed_pnm_is_thumbnailed_shown_and_served(pnm_index):
    index_dir, photos = pnm_index
    app = _app(index_dir)
    client = app.test_client()
    reader = app.extensions["dinoret.reader"]
    for name, size in (("b.ppm", (320, 240)), ("c.pgm", (3, 2))):
        i = reader.id_for_path(photos / name)
        thumb = client.get(f"/api/images/{i}/thumbnail?size=128")
        assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg", thumb.get_data(as_text=True)
        assert Image.open(io.BytesIO(thumb.data)).size[0] == min(128, size[0])
        f = client.get(f"/api/images/{i}/file")
        assert f.status_code == 200 and f.mimetype == "image/x-portable-anymap"
        assert f.data == (photos / name).read_bytes()
        page = client.get(f"/images/{i}").get_data(as_text=True)
        assert f'src="/api/images/{i}/thumbnail?size=512"' in page and "PNM files are shown as a JPEG rendition" in page
    # An upload in the same format is decoded by the same code.
    r = client.post("/api/search", data={"image": (io.BytesIO((photos / "b.ppm").read_bytes()), "q.ppm"), "k": "1"})
    assert r.status_code == 200 and r.get_json()["results"][0]["path"] == str(photos / "b.ppm")


def test_a_stored_file_that_no_longer_decodes_is_a_404_not_a_400(pnm_index, index_copy):
    photos = pnm_index[1]
    app = _app(index_copy)
    reader = app.extensions["dinoret.reader"]
    i = reader.id_for_path(photos / "a.jpg")
    saved = (photos / "a.jpg").read_bytes()
    try:
        (photos / "a.jpg").write_bytes(b"no longer an image")
        r = app.test_client().get(f"/api/images/{i}/thumbnail?size=256")
        assert r.status_code == 404 and "no longer on disk as a readable image" in r.get_json()["error"]
    finally:
        (photos / "a.jpg").write_bytes(saved)


def test_missing_shard_files_are_a_503_with_the_reason(index_copy):
    for f in (index_copy / "shards").glob("*.faiss"):
        f.unlink()
    app = _app(index_copy)
    client = app.test_client()
    r = client.post("/api/search", json={"id": 0, "k": 2})
    assert r.status_code == 503 and "shard files" in r.get_json()["error"] and "missing" in r.get_json()["error"]
    page = client.get("/search?id=0")
    assert page.status_code == 503 and "shard files" in page.get_data(as_text=True)
    # Not found stays a 404, and a bad request a 400.
    assert client.get("/api/dedup/reports/5").status_code == 404
    assert client.post("/api/search", json={"id": "x"}).status_code == 400
