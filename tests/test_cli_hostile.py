"""The CLI as a hostile user meets it: bad query files among good ones, file names with control
characters, an interrupted run, an index whose shards are not built yet, odd arguments.
Every failure is one line on stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import fcntl
import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from dinoret.cli import main
from dinoret.indexer.build import BuildOptions, build_index
from dinoret.retrieval.index import open_index
from tests.conftest import make_image

EVIL = "evil\nname\x1b[31m.jpg"  # a newline and a terminal escape sequence in a file name


def cli(*args, env=None):
    r = CliRunner().invoke(main, [str(a) for a in args], env=env)
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.output)
    assert "Traceback" not in r.output, (args, r.output)
    return r


def one_line_error(r, code: int = 2) -> None:
    assert r.exit_code == code, r.output
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile") / "photos"
    for i in range(5):
        make_image(d / f"img{i}.jpg", seed=i)
    shutil.copyfile(d / "img1.jpg", d / EVIL)  # an exact copy: dedup reports it
    (d / "bad\nfile.jpg").write_bytes(b"not an image at all")
    return d


@pytest.fixture(scope="module")
def idx(photos, tiny_weights):
    out = photos.parent / "idx"
    build_index([photos], out, BuildOptions(weights=str(tiny_weights), workers=0, progress=False))
    return out


# --- query ------------------------------------------------------------------------------

def test_a_bad_query_file_does_not_cost_the_good_one_its_results(idx, photos, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    r = cli("query", photos / "img2.jpg", text, photos / "img3.jpg", "--index", idx, "-k", 2)
    assert r.exit_code == 2, r.output
    assert r.stdout.count("query: ") == 2 and f"query: {photos / 'img3.jpg'}" in r.stdout
    assert r.stdout.splitlines()[2].split()[2] == str(photos / "img2.jpg")
    assert r.stderr == f"error: cannot read query image {text}: not an image\n"


def test_json_lists_the_bad_query_with_its_reason(idx, photos, tmp_path):
    r = cli("query", photos / "img2.jpg", tmp_path / "missing.jpg", "--index", idx, "-k", 1, "--json")
    assert r.exit_code == 2
    out = json.loads(r.stdout)
    assert out[0]["results"][0]["path"] == str(photos / "img2.jpg")
    assert out[1] == {"query": str(tmp_path / "missing.jpg"), "error": "no such file", "results": []}


@pytest.mark.parametrize("what", ["missing", "folder", "empty"])
def test_a_query_file_that_cannot_be_read_is_one_line(idx, tmp_path, what):
    target = tmp_path / "q.jpg"
    if what == "folder":
        target.mkdir()
    elif what == "empty":
        target.write_bytes(b"")
    r = cli("query", target, "--index", idx)
    one_line_error(r)
    assert str(target) in r.stderr


@pytest.mark.parametrize("k", ["0", "-3", "abc", "1e3"])
def test_bad_k_is_one_line(idx, photos, k):
    one_line_error(cli("query", photos / "img1.jpg", "--index", idx, "-k", k))


@pytest.mark.parametrize("k", [10**4, 10**11, 2**63 - 1])
def test_huge_k_gives_every_image_once(idx, photos, k):
    r = cli("query", photos / "img1.jpg", "--index", idx, "-k", k, "--json")
    assert r.exit_code == 0, r.output
    results = json.loads(r.stdout)[0]["results"]
    assert len(results) == len(open_index(idx)) and len({h["id"] for h in results}) == len(results)


# --- control characters in file names ------------------------------------------------------

def test_query_table_escapes_control_characters(idx, photos):
    r = cli("query", photos / EVIL, "--index", idx, "-k", 3)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 5 and "\x1b" not in r.stdout
    assert lines[0] == "query: " + str(photos / "evil\\nname\\x1b[31m.jpg")
    assert any(line.endswith("evil\\nname\\x1b[31m.jpg") for line in lines[2:])


def test_dedup_info_and_index_escape_control_characters(idx, photos, tiny_weights):
    r = cli("dedup", "--index", idx, "-q", "--threshold", "0.999")
    assert r.exit_code == 0 and "evil\\nname\\x1b[31m.jpg" in r.stdout and "\x1b" not in r.stdout, r.output
    assert all(line.startswith(("group", "  ", "report", "nothing", "...")) for line in r.stdout.splitlines()), r.stdout
    r = cli("info", "--index", idx, "--skipped")
    assert r.stdout == f"not an image\t{photos}/bad\\nfile.jpg\n"
    r = cli("index", photos, "--index", idx, "--weights", tiny_weights, "--workers", 0, "-q")
    assert r.exit_code == 0 and f"  {photos}/bad\\nfile.jpg: not an image" in r.stdout.splitlines(), r.stdout


def test_error_messages_with_control_characters_stay_one_line(tmp_path):
    r = cli("info", "--index", tmp_path / "no\nindex")
    one_line_error(r)
    assert "no\\nindex" in r.stderr


def test_shown_escapes_what_a_terminal_would_act_on():
    from dinoret.console import shown

    assert shown("/photos/été/猫 😀.jpg") == "/photos/été/猫 😀.jpg"
    assert shown("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert shown("x\x1b[2Jy\x7f\u202ez\u2028") == "x\\x1b[2Jy\\x7f\\u202ez\\u2028"
    assert shown(os.fsdecode(b"/bad\xff.jpg")) == "/bad\\xff.jpg"
    assert shown("family \U0001F468\u200d\U0001F469") == "family \U0001F468\u200d\U0001F469"


# --- interrupted runs and vectors not yet in the shards ------------------------------------

def _crash(*_a, **_k):
    raise KeyboardInterrupt("simulated kill -9")


@pytest.fixture
def half_built(tmp_path, tiny_weights, monkeypatch):
    """An index killed after its vectors were committed but before its shards were built."""
    photos = tmp_path / "photos"
    for i in range(6):
        make_image(photos / f"p{i}.jpg", seed=10 + i)
    idx = tmp_path / "idx"
    with monkeypatch.context() as m:
        m.setattr("dinoret.indexer.build.sync_shards", _crash)
        with pytest.raises(KeyboardInterrupt):
            build_index([photos], idx, BuildOptions(weights=str(tiny_weights), workers=0, progress=False))
    return photos, idx


def test_info_calls_a_killed_run_interrupted_not_running(half_built):
    _, idx = half_built
    r = cli("info", "--index", idx)
    assert r.exit_code == 0 and "interrupted" in r.stdout and "running" not in r.stdout, r.stdout
    assert json.loads(cli("info", "--index", idx, "--json").stdout)["last_run"]["status"] == "interrupted"


def test_a_run_that_still_holds_the_lock_is_running(half_built):
    _, idx = half_built
    with open(idx / "index.lock", "a+") as f:  # another process writing the index
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert json.loads(cli("info", "--index", idx, "--json").stdout)["last_run"]["status"] == "running"
    assert json.loads(cli("info", "--index", idx, "--json").stdout)["last_run"]["status"] == "interrupted"


def test_query_searches_committed_vectors_before_the_shards_exist(half_built):
    photos, idx = half_built
    reader = open_index(idx)
    assert reader.stats()["shards"] == 0
    r = cli("query", photos / "p3.jpg", "--index", idx, "-k", 3, "--json")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)[0]["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(photos / "p3.jpg") and hits[0]["score"] > 0.999
    assert "not in the shards yet" in cli("info", "--index", idx).stdout


def test_query_finds_images_committed_after_the_last_shard_sync(tmp_path, tiny_weights, monkeypatch):
    photos = tmp_path / "photos"
    for i in range(4):
        make_image(photos / f"p{i}.jpg", seed=30 + i)
    idx = tmp_path / "idx"
    opts = BuildOptions(weights=str(tiny_weights), workers=0, progress=False)
    build_index([photos], idx, opts)
    make_image(photos / "new.jpg", seed=99)
    (photos / "p0.jpg").unlink()  # deleted: its vector stays in the shard until the next sync
    with monkeypatch.context() as m:
        m.setattr("dinoret.indexer.build.sync_shards", _crash)
        with pytest.raises(KeyboardInterrupt):
            build_index([photos], idx, opts)
    reader = open_index(idx)
    new_id = reader.id_for_path(photos / "new.jpg")
    scores, ids = reader.search(reader.vectors([new_id]), k=10)
    found = [i for i in ids[0].tolist() if i >= 0]
    assert found[0] == new_id and sorted(found) == sorted(reader.ids().tolist())


def test_web_stats_call_a_killed_run_interrupted(half_built):
    from dinoret.webui import create_app

    _, idx = half_built
    app = create_app(idx, {"TESTING": True})
    assert app.test_client().get("/api/stats").get_json()["last_run"]["status"] == "interrupted"


# --- odd indexes and arguments ---------------------------------------------------------------

@pytest.mark.parametrize("command", [["info"], ["dedup", "-q"], ["serve"], ["query", "{photo}"], ["dedup", "--list"]])
def test_missing_or_empty_index_dir_is_one_line(tmp_path, photos, command):
    args = [a.format(photo=photos / "img1.jpg") for a in command]
    one_line_error(cli(*args, "--index", tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    one_line_error(cli(*args, "--index", tmp_path / "empty"))
    (tmp_path / "a-file").write_text("x")
    one_line_error(cli(*args, "--index", tmp_path / "a-file"))


@pytest.mark.parametrize("threshold", ["-1.5", "2", "nan", "abc"])
def test_threshold_outside_minus_one_to_one_is_one_line(idx, threshold):
    one_line_error(cli("dedup", "--index", idx, "--threshold", threshold))


def test_negative_threshold_in_range_is_accepted(idx):
    r = cli("dedup", "--index", idx, "-q", "--threshold", "-1")
    assert r.exit_code == 0 and "1 groups" in r.stdout, r.output


def test_index_of_a_missing_folder_or_a_non_image_file_is_one_line(tmp_path, tiny_weights):
    one_line_error(cli("index", tmp_path / "nowhere", "--index", tmp_path / "idx", "--weights", tiny_weights))


def test_empty_paths_are_refused_not_taken_for_the_current_folder(tmp_path, tiny_weights, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("index", "", "--index", tmp_path / "idx", "--weights", tiny_weights))
    one_line_error(cli("info", "--index", ""))
    assert not (tmp_path / "idx").exists() and not (tmp_path / "catalog.db").exists()


def test_index_where_no_folder_can_be_made_is_one_line(tmp_path, photos, tiny_weights):
    (tmp_path / "a-file").write_text("x")
    one_line_error(cli("index", photos, "--index", tmp_path / "a-file" / "idx", "--weights", tiny_weights))


def test_from_report_past_int64_is_one_line(idx):
    one_line_error(cli("dedup", "--index", idx, "--from-report", str(2**63)))


def test_report_onto_a_device_or_pipe_is_refused(idx, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    one_line_error(cli("dedup", "--index", idx, "-q", "--report", fifo))
    assert fifo.is_fifo()  # not replaced by a regular file


def test_report_that_cannot_be_written_is_one_line(idx, tmp_path):
    (tmp_path / "a-file").write_text("x")
    r = cli("dedup", "--index", idx, "-q", "--report", tmp_path / "a-file" / "r.csv")
    one_line_error(r)
    assert "--from-report" in r.stderr


def test_serve_on_a_port_in_use_is_one_line(idx):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        one_line_error(cli("serve", "--index", idx, "--port", s.getsockname()[1]))


def _make_read_only(idx, monkeypatch):
    """The index as on read-only media: nobody may write its folder."""
    real = os.access
    root = os.path.realpath(idx)

    def access(path, mode, *a, **k):
        if mode & os.W_OK and os.path.realpath(path).startswith(root):
            return False
        return real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    return idx


@pytest.fixture
def read_only(idx, monkeypatch):
    return _make_read_only(idx, monkeypatch)


def test_a_read_only_index_can_be_read(read_only, photos, tmp_path):
    assert cli("info", "--index", read_only).exit_code == 0
    r = cli("query", photos / "img2.jpg", "--index", read_only, "-k", 1)
    assert r.exit_code == 0 and str(photos / "img2.jpg") in r.stdout
    assert cli("dedup", "--index", read_only, "--list").exit_code == 0
    r = cli("dedup", "--index", read_only, "-q")
    one_line_error(r)
    assert "read-only" in r.stderr


def test_a_read_only_index_is_served_and_reviews_are_a_400(idx, monkeypatch):
    from dinoret.retrieval.dedup import find_duplicates
    from dinoret.retrieval.reports import save_report
    from dinoret.webui import create_app

    reader = open_index(idx)
    report = save_report(reader.engine, find_duplicates(reader, threshold=0.999))
    reader.close()
    _make_read_only(idx, monkeypatch)
    app = create_app(idx, {"TESTING": True})
    client = app.test_client()
    assert app.extensions["dinoret.reader"].read_only
    assert client.get("/duplicates").status_code == 200 and client.get("/api/stats").status_code == 200
    assert client.get(f"/duplicates/{report}").status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").get_data(as_text=True)).group(1)
    r = client.post(f"/duplicates/{report}/groups/1/verdict", data={"verdict": "not_duplicates", "csrf_token": token})
    assert r.status_code == 400 and "read-only" in r.get_data(as_text=True)


@pytest.mark.parametrize("args, needle", [
    (["--output", "{tmp}/a-file/run"], "run folder"),
    (["--set", "optim.epochs=abc"], "must be a number"),
    (["--set", "train.centering=5"], "must be a string"),
    (["--config", "{photo}"], "not a text file"),
])
def test_train_bad_arguments_are_one_line(tmp_path, photos, args, needle):
    (tmp_path / "a-file").write_text("x")
    args = [a.format(tmp=tmp_path, photo=photos / "img1.jpg") for a in args]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "run")]
    r = cli("train", photos, "--config", "configs/tiny.yaml", "-q", *args)
    one_line_error(r)
    assert needle in r.stderr


def _damage(idx, how: str) -> None:
    if how == "catalog":
        (idx / "catalog.db").write_text("garbage")
    elif how == "meta":
        (idx / "meta.lmdb" / "data.mdb").write_text("garbage")
    elif how == "meta-is-a-file":
        shutil.rmtree(idx / "meta.lmdb")
        (idx / "meta.lmdb").write_text("")
    elif how == "vectors":
        for f in (idx / "vectors").iterdir():
            f.unlink()
    elif how == "shard":
        for f in (idx / "shards").iterdir():
            f.write_text("garbage")


@pytest.mark.parametrize("how", ["catalog", "meta", "meta-is-a-file", "vectors", "shard"])
def test_a_damaged_index_is_one_line_for_every_command(idx, photos, tiny_weights, tmp_path, how):
    damaged = tmp_path / "damaged"
    shutil.copytree(idx, damaged)
    _damage(damaged, how)
    for args in (["info"], ["query", photos / "img1.jpg"], ["dedup", "-q"], ["dedup", "--list"],
                 ["index", photos, "--weights", tiny_weights, "--workers", 0, "-q"]):
        r = cli(*args, "--index", damaged)
        if r.exit_code != 0:  # some damage does not touch what a command reads
            one_line_error(r)
