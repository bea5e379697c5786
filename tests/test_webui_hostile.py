"""The web UI and API under hostile input: whatever a client sends, the answer is a 4xx, never a 500,
and never a redirect off the site."""
from __future__ import annotations

import pytest

from tests.test_webui import _csrf, _id, app, report_id, web_index  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HUGE = [str(2**63), str(2**64 + 5), "99999999999999999999", "9" * 5000]


@pytest.fixture
def client(app):  # noqa: F811
    return app.test_client()


def _not_5xx(r, what) -> None:
    assert r.status_code < 500, (what, r.status_code, r.get_data(as_text=True)[:300])


def _routes_with_ids(report: int, image: int) -> list[str]:
    return ["/api/images/{}", "/api/images/{}/file", "/api/images/{}/thumbnail", "/images/{}", "/duplicates/{}",
            "/api/dedup/reports/{}", "/search?id={}", f"/search?id={image}&k={{}}", f"/duplicates/{report}?page={{}}",
            f"/api/images/{image}/thumbnail?size={{}}"]


@pytest.mark.parametrize("value", HUGE)
def test_ids_past_int64_in_every_route_are_4xx(client, app, web_index, report_id, value):  # noqa: F811
    image = _id(app, web_index[1], "img01.jpg")
    for template in _routes_with_ids(report_id, image):
        url = template.format(value)
        r = client.get(url)
        _not_5xx(r, url)
    for path in ("/api/images/{}", "/images/{}", "/duplicates/{}", "/api/dedup/reports/{}"):
        assert client.get(path.format(value)).status_code == 404
    token = _csrf(client)
    for url, data in ((f"/duplicates/{value}/groups/1/verdict", {"verdict": ""}),
                      (f"/duplicates/{report_id}/groups/{value}/keeper", {"keeper": "1"}),
                      (f"/duplicates/{report_id}/groups/0/keeper", {"keeper": value}),
                      (f"/duplicates/{report_id}/groups/0/verdict", {"verdict": value, "page": value})):
        r = client.post(url, data={**data, "csrf_token": token})
        _not_5xx(r, url)
    for data in ({"id": value}, {"id": str(image), "k": value}):
        r = client.post("/api/search", data=data)
        assert r.status_code in (400, 404) and r.is_json, (data, r.status_code)
        r = client.post("/api/search", json={k: int(v) if len(v) < 4000 else v for k, v in data.items()})
        assert r.status_code in (400, 404) and r.is_json, (data, r.status_code)


@pytest.mark.parametrize("raw", ["1e23", "1e400", "-1e400", "true", "false", "1.9", "1.0", "NaN", "Infinity",
                                 '"1_0"', '"0x1"', '" 1e3 "', '"\\u0661"', "[1]", '{"a": 1}'])
@pytest.mark.parametrize("field", ["id", "k"])
def test_json_numbers_that_are_not_whole_numbers_are_400(client, app, web_index, raw, field):  # noqa: F811
    image = _id(app, web_index[1], "img01.jpg")
    body = f'{{"id": {raw}}}' if field == "id" else f'{{"id": {image}, "k": {raw}}}'
    r = client.post("/api/search", data=body, content_type="application/json")
    assert r.status_code == 400 and r.is_json, (body, r.status_code, r.get_data(as_text=True)[:200])


def test_whole_numbers_are_still_accepted_as_json_and_form_values(client, app, web_index):  # noqa: F811
    image = _id(app, web_index[1], "img01.jpg")
    for kwargs in ({"json": {"id": image, "k": 2}}, {"json": {"id": str(image), "k": "2"}},
                   {"data": {"id": str(image), "k": "2"}}, {"data": {"id": f" {image} ", "k": "2"}}):
        r = client.post("/api/search", **kwargs)
        assert r.status_code == 200 and len(r.get_json()["results"]) == 2, kwargs


@pytest.mark.parametrize("depth", [100, 2_000, 100_000])
def test_deeply_nested_json_is_400(client, depth):
    for body in ("[" * depth + "]" * depth, '{"id": ' + "[" * depth + "]" * depth + "}",
                 '{"a":' * depth + "1" + "}" * depth):
        r = client.post("/api/search", data=body, content_type="application/json")
        assert r.status_code == 400 and r.is_json, (depth, r.status_code)


@pytest.mark.parametrize("next_", ["/%09/evil.com", "/%0a/evil.com", "/%0d/evil.com", "/%20/evil.com", "%09//evil.com",
                                   "/%5c/evil.com", "/%2f/evil.com", "//evil.com", "///evil.com", "https://evil.com",
                                   "/%E3%80%80/evil.com", "/\x7f/evil.com", "javascript:alert(1)", "/%00/evil.com"])
def test_login_next_never_leaves_the_site(client, next_):
    r = client.get(f"/login?next={next_}")
    assert r.status_code == 303 and r.headers["Location"] == "/", r.headers.get("Location")


def test_login_next_keeps_a_local_path(client):
    r = client.get("/login?next=/duplicates%3Fpage%3D2")
    assert r.status_code == 303 and r.headers["Location"] == "/duplicates?page=2"


@pytest.mark.parametrize("next_", ["/a%0ab", "/%0d%0aSet-Cookie:%20x=1", "/x%00y"])
def test_control_characters_in_next_are_not_a_500(client, next_):
    r = client.get(f"/login?next={next_}")
    assert r.status_code == 303 and r.headers["Location"] == "/"
    assert "Set-Cookie: x" not in str(r.headers)


@pytest.mark.parametrize("size", ["abc", "", "1e3", "256.0", "-256", str(2**70)])
def test_thumbnail_size_that_is_not_a_listed_number_is_400(client, app, web_index, size):  # noqa: F811
    image = _id(app, web_index[1], "img01.jpg")
    r = client.get(f"/api/images/{image}/thumbnail?size={size}")
    assert r.status_code == 400 and r.is_json, (size, r.status_code)


def test_hostile_values_in_every_other_parameter(client, app, web_index, report_id):  # noqa: F811
    image = _id(app, web_index[1], "img01.jpg")
    token = _csrf(client)
    hostile = ["", "abc", "-1", "1e400", "%00", "%0a", "../../etc/passwd", "%ff%fe", "1" * 5000, "[]", "0x10"]
    for v in hostile:
        for url in (f"/search?id={v}", f"/search?id={image}&k={v}", f"/duplicates/{report_id}?page={v}",
                    f"/api/images/{image}/thumbnail?size={v}", f"/?k={v}", f"/duplicates?page={v}",
                    f"/login?next={v}", f"/api/stats?{v}={v}"):
            _not_5xx(client.get(url), url)
        for url, data in ((f"/duplicates/{report_id}/groups/0/keeper", {"keeper": v, "page": v}),
                          (f"/duplicates/{report_id}/groups/0/verdict", {"verdict": v, "page": v}),
                          ("/api/search", {"id": v, "k": v}), ("/search", {"k": v, "image": v}),
                          ("/login", {"token": v, "next": v})):
            _not_5xx(client.post(url, data={**data, "csrf_token": token}), (url, v))


@pytest.mark.parametrize("host", ["attacker.example", "\x00", "localhost:99999999999999999999", "[::1"])
@pytest.mark.parametrize("path", ["/", "/duplicates", "/api/stats", "/no-such-page"])
def test_untrusted_host_on_any_page_is_400(client, host, path):
    r = client.get(path, headers={"Host": host})
    assert r.status_code == 400, (host, path, r.status_code)
