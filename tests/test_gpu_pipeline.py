"""The GPU input path's logic, run on the CPU: batching, decoder fallback, skipped files,
prefetching, and preprocessing close to the CPU path's."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dinoret.indexer.file_dataset import content_hash, file_loader
from dinoret.indexer.gpu_pipeline import gpu_batches, prefetch
from dinoret.indexer.preprocess import Preprocess
from tests.conftest import make_image


@pytest.fixture
def mixed(tmp_path):
    d = tmp_path / "in"
    paths = [make_image(d / f"{i}.jpg", seed=i, size=(300 + 14 * i, 240)) for i in range(6)]
    paths.append(make_image(d / "p.png", seed=40, fmt="PNG"))
    good = make_image(d / "t.jpg", seed=41).read_bytes()
    (d / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    paths += [d / "trunc.jpg", d / "empty.jpg"]
    return [str(p) for p in paths]


def _flatten(batches):
    items, failed, tensors = [], [], {}
    for b in batches:
        failed += b.failed
        for t, members in b.groups:
            for row, it in zip(t, members):
                items.append(it)
                tensors[it.path] = row
    return items, failed, tensors


def test_batches_hold_every_file_once_with_reasons(mixed):
    items, failed, _ = _flatten(gpu_batches(mixed, Preprocess(), batch_size=4, device="cpu"))
    assert sorted(it.path for it in items) == sorted(mixed[:7])
    reasons = {f.path.rsplit("/", 1)[1]: f.reason for f in failed}
    assert reasons == {"trunc.jpg": "truncated image", "empty.jpg": "empty file"}  # the CPU decoder's verdicts
    for it in items:
        assert it.content_hash == content_hash(Path(it.path).read_bytes()) and it.width > 0 and it.height > 0
        # JPEGs decoded on the device carry no pixel hash; the PNG went through the CPU decoder.
        assert (it.pixel_hash is None) == it.path.endswith(".jpg")


def test_a_file_the_device_decoder_refuses_falls_back_to_the_cpu(mixed):
    from torchvision.io import decode_jpeg

    refused = open(mixed[2], "rb").read()
    calls = []

    def picky(data, **kw):
        calls.append(len(data))
        if any(bytes(d.numpy().tobytes()) == refused for d in data):
            raise RuntimeError("nvjpeg: unsupported")
        return decode_jpeg(data, **kw)

    items, failed, _ = _flatten(gpu_batches(mixed[:6], Preprocess(), batch_size=6, device="cpu", decoder=picky))
    assert calls[0] == 6 and calls[1:] == [1] * 6  # batch call failed, then one by one
    assert not failed and len(items) == 6
    by_path = {it.path: it for it in items}
    assert by_path[mixed[2]].pixel_hash is not None  # decoded by the CPU path
    assert sum(it.pixel_hash is None for it in items) == 5


@pytest.mark.parametrize("mode", ["crop", "whole"])
def test_device_preprocessing_embeds_like_the_cpu_path(mixed, tiny_weights, mode):
    from dinoret.indexer.embed import Embedder

    pre = Preprocess(mode=mode)
    emb = Embedder.load(None, str(tiny_weights), pre, "cpu")
    _, _, dev = _flatten(gpu_batches(mixed[:6], pre, batch_size=3, device="cpu"))
    _, _, cpu = _flatten(file_loader(mixed[:6], pre, batch_size=3, workers=0))
    for path in mixed[:6]:
        assert dev[path].shape == cpu[path].shape
        a, b = emb.embed_batch(dev[path][None]), emb.embed_batch(cpu[path][None])
        assert float((a * b).sum()) >= 0.99


def test_prefetch_keeps_order_and_raises_in_the_consumer():
    assert list(prefetch(iter(range(7)), depth=2)) == list(range(7))

    def broken():
        yield 1
        raise ValueError("disk gone")

    it = prefetch(broken(), depth=1)
    assert next(it) == 1
    with pytest.raises(ValueError, match="disk gone"):
        next(it)
