"""The web UI in a real browser: Debian chromium driven by playwright against `dinoret serve`.

The index holds the 56 UKBench photos (14 objects x 4 views) embedded by a ViT-S/14 with
random weights (no pretrained weights offline). Even so, the views of an object share
their colours and layout, and for ukbench00040 the other three views are the three
nearest photos (cosine 0.98 against 0.63 for the next one), which the test relies on.
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
QUERY = "ukbench00040.jpg"
MATES = {"ukbench00041.jpg", "ukbench00042.jpg", "ukbench00043.jpg"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium (.ci/run installs it)"),
]


@pytest.fixture(scope="module")
def ukbench_index(tmp_path_factory, shared_data, vits14_weights):
    """UKBench photos plus a smaller JPEG copy of ukbench00040 (a near-duplicate for the dedup report)."""
    from PIL import Image

    from dinoret.indexer.build import BuildOptions, build_index
    from dinoret.retrieval.dedup import find_duplicates
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.reports import save_report

    root = tmp_path_factory.mktemp("browser")
    copy = root / "copies" / "ukbench00040_small.jpg"
    copy.parent.mkdir()
    with Image.open(shared_data / "ukbench_first56" / "images" / QUERY) as im:
        im.resize((im.width // 2, im.height // 2)).save(copy, quality=85)
    index_dir = root / "index"
    build_index([shared_data / "ukbench_first56" / "images", copy.parent], index_dir,
                BuildOptions(weights=str(vits14_weights), workers=0, progress=False))
    reader = open_index(index_dir)
    save_report(reader.engine, find_duplicates(reader, threshold=0.995))
    return index_dir


@contextlib.contextmanager
def serving(index_dir: Path, log_dir: Path) -> Iterator[str]:
    """`dinoret serve --port 0` over ``index_dir`` in a subprocess on 127.0.0.1; yields its URL."""
    log = log_dir / "stderr.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dinoret", "serve", "--index", str(index_dir), "--host", "127.0.0.1",
             "--port", "0", "--threads", "4"],
            stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        deadline, line = time.monotonic() + 90, b""
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                break
        match = re.search(rb"on (http://\S+/)", line)
        assert match, f"dinoret serve did not start: {line!r} {log.read_text()[-2000:]}"
        yield match.group(1).decode().replace("localhost", "127.0.0.1")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(ukbench_index, tmp_path_factory):
    with serving(ukbench_index, tmp_path_factory.mktemp("serve")) as url:
        yield url


def _result_names(page) -> list[str]:
    return [t.strip() for t in page.locator("#results .hit .path").all_inner_texts()]


def test_search_more_like_this_and_duplicates_in_chromium(server, shared_data, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    photo = shared_data / "ukbench_first56" / "images" / QUERY
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page.goto(server)
            assert "Images" in page.inner_text("#stats") and "57" in page.inner_text("#stats")

            # Drop the photo on the search box, as a user dragging it from their file manager.
            with page.expect_navigation():
                page.evaluate(
                    """([b64, name]) => {
                        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                        const dt = new DataTransfer();
                        dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
                        document.getElementById("drop").dispatchEvent(
                            new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
                    }""",
                    [base64.b64encode(photo.read_bytes()).decode(), QUERY],
                )
            page.wait_for_selector("#results .hit")
            names = _result_names(page)
            assert len(names) == 16  # the default k
            assert set(names[:5]) >= MATES | {QUERY}, names[:6]
            page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

            # "More like this": click a group-mate's picture.
            mate = page.locator("#results .hit", has_text="ukbench00042.jpg").first
            with page.expect_navigation():
                mate.locator("a.more").click()
            assert re.search(r"/search\?id=\d+&k=16$", page.url)
            names = _result_names(page)
            assert "ukbench00042.jpg" not in names and set(names[:4]) >= {QUERY, "ukbench00041.jpg", "ukbench00043.jpg"}

            # k is selectable.
            page.select_option("#k-select", "8")
            with page.expect_navigation():
                page.click(".k-form button")
            assert len(_result_names(page)) == 8

            # Open a result: the full image and its metadata.
            with page.expect_navigation():
                page.locator("#results .hit a.open").first.click()
            page.wait_for_function("document.getElementById('full-image').naturalWidth > 0")
            assert "Content hash" in page.inner_text(".meta")

            # Paste an image from the clipboard on any page with the search box.
            page.goto(server)
            with page.expect_navigation():
                page.evaluate(
                    """([b64]) => {
                        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                        const dt = new DataTransfer();
                        dt.items.add(new File([bytes], "", {type: "image/jpeg"}));
                        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt, bubbles: true}));
                    }""",
                    [base64.b64encode(photo.read_bytes()).decode()],
                )
            assert set(_result_names(page)[:5]) >= MATES

            # The duplicates page: the half-size copy of the query grouped with it, keeper marked.
            page.click("text=Duplicates")
            page.wait_for_selector("#reports")
            with page.expect_navigation():
                page.locator("#reports a").first.click()
            group = page.locator(".group", has_text="ukbench00040_small.jpg").first
            assert QUERY in group.inner_text() and group.locator(".member.keeper").count() == 1
            page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "results.png").stat().st_size > 10_000
    if os.environ.get("DINORET_KEEP_SCREENSHOTS"):
        for name in ("results.png", "duplicates.png"):
            shutil.copy(tmp_path / name, Path(os.environ["DINORET_KEEP_SCREENSHOTS"]) / name)
