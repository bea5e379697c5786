"""--precision int8: the quantised trunk stays close to fp32, is recorded in the catalog,
is reused by later runs and queries, and is never mixed with fp32 vectors."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import make_image
from dinoret.cli import main
from dinoret.indexer.identity import identity_mismatch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_int8_features_are_close_to_fp32_and_really_quantised(tmp_path, tiny_weights):
    import onnx

    from dinoret.indexer import int8
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.preprocess import Preprocess
    from PIL import Image

    images = [Image.open(make_image(tmp_path / f"{i}.jpg", seed=i, size=(320 + 28 * i, 240))) for i in range(6)]
    for mode in ("crop", "whole"):  # whole: several input shapes through the same ONNX model
        fp32 = Embedder.load(None, str(tiny_weights), Preprocess(mode=mode), "cpu").embed_images(images)
        emb8 = Embedder.load(None, str(tiny_weights), Preprocess(mode=mode), "cpu", precision="int8")
        q8 = emb8.embed_images(images)
        cos = np.einsum("nd,nd->n", fp32, q8)
        assert cos.min() >= 0.99, cos
        assert np.abs(fp32 - q8).max() > 1e-5  # not the fp32 model under another name
        assert emb8.identity()["precision"] == "int8"
    cached = list(int8.cache_dir().glob("trunk-*.onnx"))
    assert len(cached) == 1
    ops = {node.op_type for node in onnx.load_from_string(cached[0].read_bytes()).graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops


def test_precision_is_recorded_reused_and_never_mixed(tmp_path, image_dir, tiny_weights):
    from dinoret.api.handle import Index
    from dinoret.retrieval.index import open_index

    idx = tmp_path / "idx"
    r = _cli("index", image_dir, "--index", idx, "--weights", tiny_weights, "--precision", "int8", "--workers", 0, "-q")
    assert r.exit_code == 0, r.output
    reader = open_index(idx)
    assert reader.identity["precision"] == "int8"
    assert reader.embedder(device="cpu").precision == "int8"  # query, dedup --against and serve embed int8
    hits = Index(reader).search(image_dir / "img03.jpg", k=1)
    assert hits[0].path.endswith("img03.jpg") and hits[0].score > 0.999
    reader.close()

    make_image(image_dir / "new.jpg", seed=55)
    r = _cli("index", image_dir, "--index", idx, "-q")  # no --precision: the index's own
    assert r.exit_code == 0 and "indexed 1," in r.output, r.output

    r = _cli("index", image_dir, "--index", idx, "--precision", "fp32", "-q")
    assert r.exit_code != 0
    assert r.output.startswith("error:") and "precision int8" in r.output and len(r.output.strip().splitlines()) == 1


def test_identity_mismatch_on_precision_old_catalogs_are_fp32():
    base = {"weights_sha256": "a", "backbone_config": {}, "dim": 64, "preprocess": {}}
    assert identity_mismatch(base, {**base, "precision": "fp32"}) is None  # made before --precision
    assert "precision int8" in identity_mismatch({**base, "precision": "int8"}, {**base, "precision": "fp32"})
    assert identity_mismatch({**base, "precision": "int8"}, {**base, "precision": "int8"}) is None
