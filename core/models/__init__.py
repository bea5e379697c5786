"""The DINOv2 backbone family, by official name.

``build_model("dinov2_vits14")`` returns an untrained model with the official
architecture; weights are loaded by :mod:`dinoret.core.weights`.
"""
from __future__ import annotations

from dinoret.core.errors import UserError
from dinoret.core.models.vit import BackboneConfig, DinoVisionTransformer

_ARCHS = {
    "s": dict(embed_dim=384, depth=12, num_heads=6),
    "b": dict(embed_dim=768, depth=12, num_heads=12),
    "l": dict(embed_dim=1024, depth=24, num_heads=16),
    "g": dict(embed_dim=1536, depth=40, num_heads=24, ffn_layer="swiglu"),
}

MODELS: dict[str, BackboneConfig] = {}
for _size, _arch in _ARCHS.items():
    MODELS[f"dinov2_vit{_size}14"] = BackboneConfig(**_arch)
    # The register models were trained without the 0.1 offset and with antialiasing.
    MODELS[f"dinov2_vit{_size}14_reg"] = BackboneConfig(
        **_arch, num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0
    )


def model_config(name: str) -> BackboneConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}", param="model") from None


def build_model(name_or_cfg: str | BackboneConfig, **overrides) -> DinoVisionTransformer:
    cfg = model_config(name_or_cfg) if isinstance(name_or_cfg, str) else name_or_cfg
    if overrides:
        cfg = BackboneConfig.from_dict({**cfg.to_dict(), **overrides})
    return DinoVisionTransformer(cfg)


__all__ = ["MODELS", "BackboneConfig", "DinoVisionTransformer", "build_model", "model_config"]
