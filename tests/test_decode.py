"""Every kind of bad file becomes a SkipFile with a short reason; good files decode upright."""
from __future__ import annotations

import errno
import io

import pytest
from PIL import Image

from dinoret.indexer import decode
from dinoret.indexer.decode import SkipFile, open_image, sniff_format
from tests.conftest import make_image


def _reason(path, **kw) -> str:
    with pytest.raises(SkipFile) as e:
        open_image(path, **kw)
    return e.value.reason


def test_sniff_by_content(tmp_path) -> None:
    for fmt, ext in [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"),
                     ("TIFF", "tif"), ("PPM", "ppm")]:
        p = make_image(tmp_path / f"a.{ext}", seed=1, size=(40, 30), fmt=fmt)
        assert sniff_format(p.read_bytes()[:16]) is not None, fmt
    assert sniff_format(b"hello world, not an image") is None
    assert sniff_format(b"") is None


def test_bad_files_are_skipped_with_reasons(tmp_path) -> None:
    good = make_image(tmp_path / "good.jpg", seed=1, size=(400, 300))
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert _reason(tmp_path / "empty.jpg") == "empty file"
    (tmp_path / "text.jpg").write_text("this is not a picture")
    assert _reason(tmp_path / "text.jpg") == "not an image"
    data = good.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    assert _reason(tmp_path / "truncated.jpg") == "truncated image"
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    assert _reason(tmp_path / "broken.jpg") == "broken symlink"
    bomb = tmp_path / "bomb.png"
    Image.new("L", (4000, 3000)).save(bomb)
    assert _reason(bomb, max_pixels=1_000_000) == "decompression bomb"
    assert open_image(bomb).width == 4000  # under the default limit it decodes


def test_permission_denied_reason(tmp_path, monkeypatch) -> None:
    # Tests may run as root, which reads any file: raise the error the OS would give.
    p = make_image(tmp_path / "locked.jpg", seed=1)

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(decode.Image, "open", denied)
    assert _reason(p) == "permission denied"


def test_exif_orientation_and_modes(tmp_path) -> None:
    img = Image.open(make_image(tmp_path / "src.png", seed=2, size=(300, 200)))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    d = open_image(tmp_path / "rot.jpg")
    assert d.image.size == (200, 300) and (d.width, d.height) == (200, 300)
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (50, 40)).save(tmp_path / "pal.gif")
    Image.new("L", (50, 40)).save(tmp_path / "gray.png")
    for name in ["alpha.png", "pal.gif", "gray.png"]:
        assert open_image(tmp_path / name).image.mode == "RGB"


def test_jpeg_draft_reduces_large_photos(tmp_path) -> None:
    p = make_image(tmp_path / "big.jpg", seed=3, size=(2048, 1536))
    d = open_image(p, draft_size=256)
    assert (d.width, d.height) == (2048, 1536)  # the full size is recorded
    assert min(d.image.size) >= 256 and d.image.size[0] < 2048  # decoded at a reduced scale


def test_real_fixtures(shared_data) -> None:
    root = shared_data / "imagededup_testdata"
    assert _reason(root / "mixed_images" / "ukbench09268_corrupt.jpg") == "not an image"
    # The same JPEG bytes under wrong extensions decode by content.
    for ext in ["bmp", "png", "svg", "jpeg", "webp"]:
        d = open_image(root / "formats_images" / f"ukbench09380.{ext}")
        assert (d.width, d.height) == (640, 480)
    for name in ["Iggy.1024.ppm", "baboon.pgm", "marbles.pbm", "copyleft.tiff", "giphy.gif"]:
        assert open_image(root / "formats_images" / name).image.mode == "RGB"


def test_png_copy_of_a_decoded_jpeg_has_identical_pixels(tmp_path) -> None:
    # A PNG saved from a decoded JPEG decodes to identical pixels (what pixel hashes rely on).
    jpg = make_image(tmp_path / "a.jpg", seed=4)
    a = open_image(jpg).image
    buf = io.BytesIO()
    a.save(buf, format="PNG")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    assert open_image(tmp_path / "a.png").image.tobytes() == a.tobytes()
