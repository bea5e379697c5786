"""Preprocessing equals the official DINOv2 evaluation transform; the embedder's output contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from dinoret.indexer.embed import Embedder
from dinoret.indexer.preprocess import Preprocess
from tests.conftest import make_image


def _official_eval_transform() -> transforms.Compose:
    """dinov2/data/transforms.py make_classification_eval_transform()."""
    return transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (256, 256), (1000, 333), (300, 299)])
def test_crop_mode_is_the_official_eval_transform(tmp_path, size) -> None:
    img = Image.open(make_image(tmp_path / "a.png", seed=3, size=size)).convert("RGB")
    ours = Preprocess()(img)
    ref = _official_eval_transform()(img)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert (ours - ref).abs().max() < 1e-5


def test_whole_mode_keeps_the_image_and_rounds_to_patches(tmp_path) -> None:
    p = Preprocess(mode="whole")
    img = Image.open(make_image(tmp_path / "a.png", seed=3, size=(640, 360))).convert("RGB")
    t = p(img)
    assert t.shape[1] % 14 == 0 and t.shape[2] % 14 == 0
    assert t.shape[1:] == (224, 392)  # shorter side 224, aspect kept (640/360*224 = 398 -> 392)
    assert p.output_size(4000, 500) == (448, 56)  # long side capped
    assert Preprocess.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError):
        Preprocess(mode="stretch")


def test_embedder_outputs_normalised_float32(tiny_weights, tmp_path) -> None:
    emb = Embedder.load(weights=str(tiny_weights), device="cpu")
    imgs = [Image.open(make_image(tmp_path / f"{i}.png", seed=i)).convert("RGB") for i in range(5)]
    v = emb.embed_images(imgs, batch_size=2)
    assert v.shape == (5, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # Batching does not change results, and distinct images give distinct vectors.
    np.testing.assert_allclose(emb.embed_images(imgs[:1]), v[:1], atol=1e-5)
    assert (v @ v.T)[np.triu_indices(5, 1)].max() < 0.9999
    ident = emb.identity()
    assert ident["dim"] == 64 and ident["preprocess"]["crop"] == 224 and len(ident["weights_sha256"]) == 64


def test_embedder_whole_mode_mixed_shapes(tiny_weights, tmp_path) -> None:
    emb = Embedder.load(weights=str(tiny_weights), preprocess=Preprocess(mode="whole"), device="cpu")
    imgs = [Image.open(make_image(tmp_path / f"{i}.png", seed=i, size=s)).convert("RGB")
            for i, s in enumerate([(300, 200), (200, 300), (300, 200)])]
    v = emb.embed_images(imgs)
    one_by_one = np.concatenate([emb.embed_images([im]) for im in imgs])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)


def test_embedding_is_the_class_token_after_norm(tiny_weights, tmp_path) -> None:
    emb = Embedder.load(weights=str(tiny_weights), device="cpu")
    img = Image.open(make_image(tmp_path / "a.png", seed=1)).convert("RGB")
    x = emb.preprocess(img)[None]
    with torch.no_grad():
        cls = emb.model.forward_features(x)["x_norm_clstoken"]
    np.testing.assert_allclose(emb.embed_images([img])[0], torch.nn.functional.normalize(cls, dim=-1)[0].numpy(), atol=1e-6)
