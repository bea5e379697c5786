"""The web UI's Clusters page over a real index of generated photos (tiny random ViT)."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from dinoret.cli import main
from tests.conftest import make_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, tiny_weights):
    from dinoret.indexer.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("clusters_web")
    for i in range(16):
        make_image(root / "photos" / f"c{i:02d}.jpg", seed=300 + i)
    build_index([root / "photos"], root / "idx", BuildOptions(weights=str(tiny_weights), workers=0, progress=False))
    return root / "idx"


@pytest.fixture(scope="module")
def client(index_dir):
    from dinoret.webui import create_app

    return create_app(index_dir, {"TESTING": True}).test_client()


def _curate(*args):
    r = CliRunner().invoke(main, ["curate", *map(str, args)])
    assert r.exit_code == 0, r.output


def test_clusters_page_browses_levels_and_links_more_like_this(index_dir, client) -> None:
    html = client.get("/clusters").get_data(as_text=True)
    assert 'id="no-clusters"' in html and "dinoret curate clusters" in html
    _curate("clusters", "--index", index_dir, "--clusters", "6,2", "-q")

    html = client.get("/clusters").get_data(as_text=True)
    assert 'href="/clusters"' in html  # in the navigation bar
    tops = re.findall(r'href="/clusters/2/(\d+)"', html)
    assert len(tops) == 2 and "16 images in 2 levels" in html
    assert len(re.findall(r'href="/search\?id=\d+"', html)) >= 2  # every picture: more like this
    sizes = [int(n) for n in re.findall(r'class="count">(\d+) images', html)]
    assert sum(sizes) == 16 and sizes == sorted(sizes, reverse=True)

    leaves = []
    for top in tops:
        page = client.get(f"/clusters/2/{top}").get_data(as_text=True)
        assert "level 2 · " in page and 'href="/clusters"' in page
        leaves += re.findall(r'href="/clusters/1/(\d+)"', page)
    assert sorted(map(int, leaves)) == list(range(6))

    images = 0
    for leaf in leaves:
        page = client.get(f"/clusters/1/{leaf}").get_data(as_text=True)
        assert re.search(r'href="/clusters/2/\d+">level 2', page)  # the trail up
        hits = re.findall(r'<figure class="hit" data-id="(\d+)"', page)
        assert hits and len(re.findall(r'class="more" href="/search\?id=\d+&amp;k=16"', page)) == len(hits)
        images += len(hits)
    assert images == 16
    assert client.get("/clusters/1/99").status_code == 404
    assert client.get("/clusters/3/0").status_code == 404

    # A new clustering shows at once.
    _curate("clusters", "--index", index_dir, "--clusters", "4", "--recluster", "-q")
    html = client.get("/clusters").get_data(as_text=True)
    assert len(re.findall(r'href="/clusters/1/(\d+)"', html)) == 4 and "16 images in 1 levels" in html
