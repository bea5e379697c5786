"""The web UI and JSON API through Flask's test client, over a real index of generated photos."""
from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from tests.conftest import make_image

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def web_index(tmp_path_factory, tiny_weights):
    """An index of 8 photos, two copies of photos/img00.jpg (PNG, smaller JPEG) and a truncated JPEG,
    with one dedup report saved in its catalog."""
    from dinoret.indexer.build import BuildOptions, build_index

    root = tmp_path_factory.mktemp("web")
    photos = root / "photos"
    for i in range(8):
        make_image(photos / f"img{i:02d}.jpg", seed=i)
    original = Image.open(photos / "img00.jpg")
    original.save(photos / "copy_png.png")
    original.resize((240, 180)).save(photos / "copy_small.jpg", quality=90)
    (photos / "broken.jpg").write_bytes((photos / "img01.jpg").read_bytes()[:300])
    index_dir = root / "index"
    build_index([photos], index_dir, BuildOptions(weights=str(tiny_weights), workers=0, progress=False))
    return index_dir, photos


@pytest.fixture(scope="module")
def report_id(app):
    from dinoret.retrieval.dedup import find_duplicates
    from dinoret.retrieval.reports import save_report

    reader = app.extensions["dinoret.reader"]  # LMDB allows one open environment per process and index
    result = find_duplicates(reader, threshold=0.9)
    assert result.groups, "the two copies of img00 should make a group"
    return save_report(reader.engine, result)


@pytest.fixture(scope="module")
def app(web_index):
    from dinoret.webui import create_app

    return create_app(web_index[0], {"TESTING": True})


@pytest.fixture
def configure(app, monkeypatch):
    """Change the app's config for one test (every setting is read per request)."""
    return lambda **config: [monkeypatch.setitem(app.config, k, v) for k, v in config.items()]


@pytest.fixture
def client(app):
    return app.test_client()


def _id(app, photos, name: str) -> int:
    return app.extensions["dinoret.reader"].id_for_path(photos / name)


def _csrf(client, path: str = "/") -> str:
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def _upload(path_or_bytes, name: str = "q.jpg") -> dict:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else path_or_bytes.read_bytes()
    return {"image": (io.BytesIO(data), name)}


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# --- pages -------------------------------------------------------------------

def test_home_shows_the_index_and_a_search_box(client):
    r = client.get("/")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "tiny" in html or "dinov2" in html  # the model name
    assert re.search(r"<th>Images</th><td>10</td>", html)
    assert re.search(r"<th>Skipped files</th><td>1</td>", html)
    assert "broken.jpg" in html and 'type="file"' in html and 'name="csrf_token"' in html


def test_results_page_by_id_links_more_like_this_and_the_image_page(app, client, web_index):
    qid = _id(app, web_index[1], "img00.jpg")
    html = client.get(f"/search?id={qid}&k=4").get_data(as_text=True)
    ids = [int(i) for i in re.findall(r'<figure class="hit" data-id="(\d+)"', html)]
    assert len(ids) == 4 and qid not in ids
    assert {_id(app, web_index[1], "copy_png.png"), _id(app, web_index[1], "copy_small.jpg")} <= set(ids[:2])
    assert f'href="/search?id={ids[0]}&amp;k=4"' in html and f'href="/images/{ids[0]}"' in html


def test_results_page_by_upload(client, web_index):
    token = _csrf(client)
    r = client.post("/search", data={**_upload(web_index[1] / "img03.jpg"), "k": "8", "csrf_token": token})
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert 'src="data:image/jpeg;base64,' in html  # the query shown from the upload itself
    assert re.search(r'data-id="\d+"[^§]*?img03\.jpg', html)
    assert len(re.findall(r'<figure class="hit"', html)) == 8


def test_image_page_shows_the_full_image_and_its_metadata(app, client, web_index):
    i = _id(app, web_index[1], "img02.jpg")
    html = client.get(f"/images/{i}").get_data(as_text=True)
    assert f'src="/api/images/{i}/file"' in html and str(web_index[1] / "img02.jpg") in html
    assert "320 × 240" in html
    assert client.get("/images/99999").status_code == 404


def test_duplicates_pages_show_groups_with_keeper(app, client, report_id, web_index):
    assert f'href="/duplicates/{report_id}"' in client.get("/duplicates").get_data(as_text=True)
    html = client.get(f"/duplicates/{report_id}").get_data(as_text=True)
    members = re.findall(r'<figure class="member( keeper)?" data-id="(\d+)"', html)
    ids = {int(i) for _, i in members}
    assert {_id(app, web_index[1], n) for n in ("img00.jpg", "copy_png.png", "copy_small.jpg")} <= ids
    assert sum(1 for keeper, _ in members if keeper) == len(re.findall(r'class="panel group', html))
    assert client.get("/duplicates/999").status_code == 404


def test_reviewer_marks_not_duplicates_and_changes_keeper(app, report_id):
    from dinoret.retrieval.reports import load_report

    client = app.test_client()
    engine = app.extensions["dinoret.reader"].engine
    group = load_report(engine, report_id)["groups"][0]
    other = next(m["id"] for m in group["members"] if not m["is_keeper"])
    base = f"/duplicates/{report_id}/groups/{group['group']}"
    # Without the session's CSRF token nothing changes.
    assert client.post(f"{base}/keeper", data={"keeper": other}).status_code == 403
    token = _csrf(client, f"/duplicates/{report_id}")
    r = client.post(f"{base}/keeper", data={"keeper": other, "csrf_token": token})
    assert r.status_code == 303 and r.headers["Location"].endswith(f"#group-{group['group']}")
    assert load_report(engine, report_id)["groups"][0]["keeper"] == other
    assert client.post(f"{base}/keeper", data={"keeper": 12345, "csrf_token": token}).status_code == 400
    assert client.post(f"{base}/verdict", data={"verdict": "not_duplicates", "csrf_token": token}).status_code == 303
    assert load_report(engine, report_id)["groups"][0]["reviewed"] == "not_duplicates"
    assert "not duplicates</span>" in client.get(f"/duplicates/{report_id}").get_data(as_text=True)
    assert client.post(f"{base}/verdict", data={"verdict": "maybe", "csrf_token": token}).status_code == 400
    client.post(f"{base}/verdict", data={"verdict": "", "csrf_token": token})
    assert load_report(engine, report_id)["groups"][0]["reviewed"] is None


# --- JSON API ------------------------------------------------------------------

def test_api_stats(client):
    stats = client.get("/api/stats").get_json()
    assert stats["images"] == 10 and stats["skipped"] == 1 and stats["shards"] >= 1
    assert stats["last_run"]["status"] == "done"


def test_api_image_record_and_file(app, client, web_index):
    i = _id(app, web_index[1], "img05.jpg")
    rec = client.get(f"/api/images/{i}").get_json()
    assert rec["id"] == i and rec["path"] == str(web_index[1] / "img05.jpg") and (rec["width"], rec["height"]) == (320, 240)
    assert rec["links"]["thumbnail"] == f"/api/images/{i}/thumbnail"
    f = client.get(f"/api/images/{i}/file")
    assert f.status_code == 200 and f.mimetype == "image/jpeg"
    assert f.data == (web_index[1] / "img05.jpg").read_bytes()
    missing = client.get("/api/images/424242")
    assert missing.status_code == 404 and "424242" in missing.get_json()["error"]


def test_thumbnails_are_made_once_and_cached_by_content(app, client, web_index):
    i = _id(app, web_index[1], "img06.jpg")
    r = client.get(f"/api/images/{i}/thumbnail?size=128")
    assert r.status_code == 200 and r.mimetype == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.data)).size) == 128
    record = app.extensions["dinoret.reader"].record(i)
    from dinoret.webui.thumbnails import cache_name

    cached = app.config["THUMB_DIR"] / cache_name(record.content_hash, 128)
    assert cached.is_file()
    cached.write_bytes(r.data[:-1] + b"\xd9")  # a marker: the next answer must come from the cache
    assert client.get(f"/api/images/{i}/thumbnail?size=128").data == cached.read_bytes()
    bad = client.get(f"/api/images/{i}/thumbnail?size=77")
    assert bad.status_code == 400 and "size" in bad.get_json()["error"]


def test_a_file_changed_since_indexing_is_shown_but_not_cached_under_its_old_hash(app, client, web_index):
    import os

    from dinoret.webui.thumbnails import cache_name

    path = web_index[1] / "img07.jpg"
    record = app.extensions["dinoret.reader"].record(_id(app, web_index[1], "img07.jpg"))
    os.utime(path, (record.mtime + 60, record.mtime + 60))
    try:
        r = client.get(f"/api/images/{record.id}/thumbnail?size=512")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.data)).size == (320, 240)  # never enlarged
        assert not (app.config["THUMB_DIR"] / cache_name(record.content_hash, 512)).exists()
    finally:
        os.utime(path, (record.mtime, record.mtime))


def test_wrong_method_is_a_json_405(client):
    r = client.get("/api/search")
    assert r.status_code == 405 and r.get_json()["status"] == 405 and "POST" in r.headers["Allow"]


def test_api_search_by_id_and_by_upload(app, client, web_index):
    photos = web_index[1]
    qid = _id(app, photos, "img00.jpg")
    body = client.post("/api/search", data={"id": str(qid), "k": "3"}).get_json()
    assert body["query"] == {"id": qid} and body["k"] == 3 and len(body["results"]) == 3
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True) and qid not in [h["id"] for h in body["results"]]
    assert {h["path"] for h in body["results"][:2]} == {str(photos / "copy_png.png"), str(photos / "copy_small.jpg")}
    assert client.post("/api/search", json={"id": qid, "k": 3}).get_json() == body

    up = client.post("/api/search", data={**_upload(photos / "img04.jpg"), "k": "5"}).get_json()
    assert up["query"] == {"upload": {"width": 320, "height": 240}} and len(up["results"]) == 5
    assert up["results"][0]["path"] == str(photos / "img04.jpg") and up["results"][0]["score"] > 0.999


@pytest.mark.parametrize(
    "data, status, needle",
    [
        ({"image": (io.BytesIO(b"%PDF-1.4 not an image at all"), "x.jpg")}, 400, "not an image"),
        ({"image": (io.BytesIO(b""), "empty.png")}, 400, "not an image"),
        ({"id": "7", "image": (io.BytesIO(b"x"), "x.jpg")}, 400, "either"),
        ({}, 400, "send an image"),
        ({"id": "abc"}, 400, "whole-number"),
        ({"id": "99999"}, 404, "no image with id"),
        ({"id": "0", "k": "0"}, 400, "k must be"),
        ({"id": "0", "k": "1000"}, 400, "k must be"),
        ({"id": "0", "k": "2; DROP TABLE"}, 400, "k must be"),
    ],
)
def test_api_search_rejects_bad_input_with_json(client, data, status, needle):
    r = client.post("/api/search", data=data)
    assert r.status_code == status and r.is_json
    assert needle in r.get_json()["error"] and r.get_json()["status"] == status


def test_truncated_upload_is_a_400(client, web_index):
    data = (web_index[1] / "img01.jpg").read_bytes()[:400]
    r = client.post("/api/search", data=_upload(data))
    assert r.status_code == 400 and r.get_json()["error"] in ("truncated image", "unreadable image")


def test_upload_limits_bytes_and_pixels(app, configure):
    configure(MAX_CONTENT_LENGTH=4096, MAX_UPLOAD_PIXELS=10_000)
    client = app.test_client()
    big = client.post("/api/search", data=_upload(b"\xff\xd8\xff" + b"0" * 10_000))
    assert big.status_code == 413 and "limit" in big.get_json()["error"]
    wide = client.post("/api/search", data=_upload(_png((200, 100)), "wide.png"))  # 20,000 pixels, small file
    assert wide.status_code == 400 and "pixels" in wide.get_json()["error"]
    page = client.post("/search", data=_upload(_png((200, 100)), "wide.png") | {"csrf_token": _csrf(client)})
    assert page.status_code == 400 and page.mimetype == "text/html" and "pixels" in page.get_data(as_text=True)


def test_dedup_reports_api(client, report_id):
    listing = client.get("/api/dedup/reports").get_json()["reports"]
    assert report_id in [r["id"] for r in listing]
    rep = client.get(f"/api/dedup/reports/{report_id}").get_json()
    assert rep["id"] == report_id and rep["groups"] and all(len(g["members"]) >= 2 for g in rep["groups"])
    assert client.get("/api/dedup/reports/777").status_code == 404


def test_openapi_describes_every_api_route(app, client):
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path], (path, method)


# --- security ------------------------------------------------------------------

@pytest.mark.parametrize(
    "url",
    [
        "/api/images/../../../../etc/passwd",
        "/api/images/..%2f..%2f..%2fetc%2fpasswd/file",
        "/api/images/%2e%2e/%2e%2e/etc/passwd/thumbnail",
        "/api/images/-1/file",
        "/api/images/1.5/file",
        "/static/../../../../etc/passwd",
        "/static/..%2f..%2fsetup.cfg",
        "/images/..%2f..%2fetc%2fpasswd",
    ],
)
def test_path_traversal_is_refused(client, url):
    r = client.get(url)
    assert r.status_code in (400, 404)
    assert b"root:" not in r.data and b"[metadata]" not in r.data


def test_upload_file_name_is_never_used_as_a_path(client, web_index, tmp_path):
    evil = tmp_path / "evil.jpg"
    name = "../" * 12 + str(evil).lstrip("/")
    r = client.post("/api/search", data=_upload(web_index[1] / "img02.jpg", name))
    assert r.status_code == 200 and not evil.exists()
    assert client.post("/api/search", data={"id": "../../../etc/passwd"}).status_code == 400


def test_errors_never_show_a_traceback(app, client, monkeypatch):
    reader = app.extensions["dinoret.reader"]

    def boom():
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(reader, "stats", boom)
    for url in ("/api/stats", "/"):
        r = client.get(url)
        body = r.get_data(as_text=True)
        assert r.status_code == 500 and "Traceback" not in body and "secret internal detail" not in body
    assert client.get("/api/stats").get_json()["error"].startswith("internal error")


def test_security_headers_and_host_check(client):
    r = client.get("/")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "SameSite=Strict" in r.headers.get("Set-Cookie", "") and "HttpOnly" in r.headers["Set-Cookie"]
    # A DNS-rebinding page reaches the server under its own host name: refused.
    assert client.get("/api/stats", headers={"Host": "attacker.example"}).status_code == 400


def test_token_protects_every_route(web_index, app, configure, report_id):
    configure(API_TOKEN="s3cret-token")
    locked, client = app, app.test_client()
    i = _id(app, web_index[1], "img01.jpg")
    urls = ["/", f"/search?id={i}", f"/images/{i}", "/duplicates", f"/duplicates/{report_id}", "/api/stats",
            f"/api/images/{i}", f"/api/images/{i}/thumbnail", f"/api/images/{i}/file", "/api/dedup/reports",
            f"/api/dedup/reports/{report_id}", "/api/openapi.json", "/static/style.css", "/clusters"]
    not_here = ["/clusters/1/0"]  # 404 with the token: this index has no clustering
    posts = ["/api/search", f"/duplicates/{report_id}/groups/0/verdict", f"/duplicates/{report_id}/groups/0/keeper"]
    # Every route of the app is in one of the lists (a new route must be added here).
    routed = {locked.url_map.bind("localhost").match(u.split("?")[0], method=m)[0]
              for urls_, m in ((urls + not_here, "GET"), (posts, "POST")) for u in urls_}
    assert routed == {r.endpoint for r in locked.url_map.iter_rules()} - {"pages.login"}
    for url in urls + not_here:
        assert client.get(url).status_code == 401, url
    for url in posts:
        assert client.post(url, data={"id": str(i)}).status_code == 401, url
    assert client.get("/api/stats").headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/stats", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    for url in urls:
        assert client.get(url, headers=ok).status_code == 200, url
    # A bearer token is not sent by browsers on their own: no CSRF token needed with it.
    assert client.post("/api/search", data={"id": str(i), "k": "2"}, headers=ok).status_code == 200


def test_token_login_for_browsers(app, configure):
    configure(API_TOKEN="s3cret-token")
    client = app.test_client()
    page = client.get("/duplicates")
    assert page.status_code == 401 and 'name="token"' in page.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True)).group(1)
    wrong = client.post("/login", data={"token": "nope", "next": "/duplicates", "csrf_token": token})
    assert wrong.status_code == 401
    evil = client.post("/login", data={"token": "s3cret-token", "next": "//evil.example/", "csrf_token": token})
    assert evil.status_code == 303 and evil.headers["Location"] == "/"
    assert client.get("/duplicates").status_code == 200

    other = app.test_client()
    r = other.get("/duplicates?token=s3cret-token")
    assert r.status_code == 303 and r.headers["Location"] == "/duplicates"  # the token leaves the address bar
    assert other.get("/duplicates").status_code == 200
    assert app.test_client().get("/?token=guess").status_code == 401


def test_serve_command_help_and_missing_index(tmp_path):
    from click.testing import CliRunner

    from dinoret.cli import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["serve", "--help"]).output
    assert "Example:" in help_text and "--token" in help_text and "127.0.0.1" in help_text
    r = runner.invoke(main, ["serve", "--index", str(tmp_path / "none")])
    assert r.exit_code == 2 and r.output.startswith("error: no index at")
