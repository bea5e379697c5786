"""The backbone against timm's DINOv2 ViT and the official position-embedding interpolation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dinoret.core.models import MODELS, build_model

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import checkpoint_filter_fn  # noqa: E402


def _random_state(model: torch.nn.Module, seed: int = 0) -> dict:
    """Random weights with realistic scales (norm weights near 1, LayerScale small)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        r = torch.randn(v.shape, generator=g)
        if k.endswith("gamma"):
            sd[k] = 0.1 + 0.05 * r
        elif "norm" in k and k.endswith("weight"):
            sd[k] = 1.0 + 0.1 * r
        else:
            sd[k] = 0.02 * r
    return sd


@pytest.mark.parametrize(
    "ours, theirs",
    [("dinov2_vits14", "vit_small_patch14_dinov2"), ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2")],
)
def test_parity_with_timm_at_native_518(ours: str, theirs: str) -> None:
    model = build_model(ours).eval()
    sd = _random_state(model)
    model.load_state_dict(sd, strict=True)
    ref = timm.create_model(theirs, pretrained=False).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref), strict=True)
    x = torch.randn(2, 3, 518, 518, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model.forward_features(x)
        ref_tokens = ref.forward_features(x)
    n_prefix = ref.num_prefix_tokens
    assert (out["x_norm_clstoken"] - ref_tokens[:, 0]).abs().max() < 1e-4
    assert (out["x_norm_patchtokens"] - ref_tokens[:, n_prefix:]).abs().max() < 1e-4
    assert torch.equal(model(x), out["x_norm_clstoken"])


def test_swiglu_giant_block_matches_timm() -> None:
    """ViT-g's fused SwiGLU FFN: official hidden width (4096) and timm's packed SwiGLU output."""
    ours = build_model("dinov2_vitg14", depth=1, img_size=14 * 8).eval()
    assert ours.blocks[0].mlp.w12.weight.shape == (8192, 1536)
    assert ours.blocks[0].mlp.w3.weight.shape == (1536, 4096)
    sd = _random_state(ours)
    ours.load_state_dict(sd, strict=True)
    ref = timm.create_model("vit_giant_patch14_dinov2", pretrained=False, depth=1, img_size=14 * 8).eval()
    ref.load_state_dict(checkpoint_filter_fn(dict(sd), ref), strict=True)
    x = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        assert (ours(x) - ref.forward_features(x)[:, 0]).abs().max() < 1e-4


def test_official_parameter_counts() -> None:
    """The four sizes have the official parameter counts (built on the meta device: no memory)."""
    expected_millions = {"dinov2_vits14": 22.06, "dinov2_vitb14": 86.58, "dinov2_vitl14": 304.37, "dinov2_vitg14": 1136.48}
    with torch.device("meta"):
        for name, millions in expected_millions.items():
            n = sum(p.numel() for p in build_model(name).parameters())
            assert abs(n / 1e6 - millions) < 0.01, (name, n)
            reg = sum(p.numel() for p in build_model(name + "_reg").parameters())
            assert reg - n == 4 * MODELS[name].embed_dim


def _official_interpolate(pos_embed: torch.Tensor, x: torch.Tensor, w: int, h: int, patch: int,
                          offset: float, antialias: bool) -> torch.Tensor:
    """facebookresearch/dinov2 DinoVisionTransformer.interpolate_pos_encoding, transcribed
    (including its naming: ``w`` is the tensor's dim 2, ``h`` its dim 3)."""
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0, h0 = w // patch, h // patch
    M = int(math.sqrt(N))
    kwargs = {}
    if offset:
        kwargs["scale_factor"] = (float(w0 + offset) / M, float(h0 + offset) / M)
    else:
        kwargs["size"] = (w0, h0)
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, M, M, dim).permute(0, 3, 1, 2), mode="bicubic", antialias=antialias, **kwargs
    )
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


@pytest.mark.parametrize("name", ["dinov2_vits14", "dinov2_vits14_reg"])
@pytest.mark.parametrize("hw", [(224, 224), (224, 308), (518, 336)])
def test_pos_embed_interpolation_is_official(name: str, hw: tuple[int, int]) -> None:
    model = build_model(name, depth=1).eval()
    cfg = model.cfg
    h, w = hw
    tokens = torch.zeros(1, 1 + (h // 14) * (w // 14), cfg.embed_dim)
    ours = model.interpolate_pos_encoding(tokens, h, w)
    ref = _official_interpolate(model.pos_embed.data, tokens, h, w, 14, cfg.interpolate_offset, cfg.interpolate_antialias)
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_offset_and_antialias_settings_differ_by_family() -> None:
    plain, reg = MODELS["dinov2_vits14"], MODELS["dinov2_vits14_reg"]
    assert (plain.interpolate_offset, plain.interpolate_antialias) == (0.1, False)
    assert (reg.interpolate_offset, reg.interpolate_antialias) == (0.0, True)
    # The two settings really give different embeddings at 224 px (so the test above can tell them apart).
    model = build_model("dinov2_vits14", depth=1).eval()
    tokens = torch.zeros(1, 1 + 16 * 16, 384)
    a = model.interpolate_pos_encoding(tokens, 224, 224)
    model.cfg = reg
    b = model.interpolate_pos_encoding(tokens, 224, 224)
    assert not torch.allclose(a, b)


def test_non_square_and_masked_forward() -> None:
    model = build_model("dinov2_vits14_reg", depth=2).eval()
    x = torch.randn(2, 3, 224, 308)
    masks = torch.zeros(2, 16 * 22, dtype=torch.bool)
    masks[:, :10] = True
    with torch.no_grad():
        out = model.forward_features(x, masks)
        plain = model.forward_features(x)
    assert out["x_norm_patchtokens"].shape == (2, 16 * 22, 384)
    assert out["x_norm_regtokens"].shape == (2, 4, 384)
    assert not torch.allclose(out["x_norm_clstoken"], plain["x_norm_clstoken"])
    with pytest.raises(ValueError, match="multiple of patch size"):
        model(torch.randn(1, 3, 100, 100))


def test_drop_path_only_in_training() -> None:
    model = build_model("dinov2_vits14", depth=2, drop_path_rate=0.5)
    x = torch.randn(4, 3, 56, 56)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a = model(x)
        b = model(x)
    assert not torch.allclose(a, b)
