"""``dinoret.models()``: the DINOv2 backbones by name, and where their weights would come from."""
from __future__ import annotations

from dinoret.core.models import MODELS
from dinoret.core.weights import hub_cache_path, official_url


def models() -> list[dict]:
    """Every backbone name ``dinoret.load_backbone``, ``dinoret.embed`` and ``dinoret.index``
    accept, as ``dinoret models`` lists them: ``name``, ``dim``, ``depth``, ``registers``,
    ``cached`` (the weights file in the torch hub cache, or None) and ``url`` (the official
    download).

    >>> [m["name"] for m in dinoret.models()][:2]
    ['dinov2_vits14', 'dinov2_vits14_reg']
    >>> next(m["dim"] for m in dinoret.models() if m["name"] == "dinov2_vitb14")
    768
    """
    out = []
    for name, cfg in MODELS.items():
        cached = hub_cache_path(name)
        out.append({"name": name, "dim": cfg.embed_dim, "depth": cfg.depth, "registers": cfg.num_register_tokens,
                    "cached": str(cached) if cached.is_file() else None, "url": official_url(name)})
    return out
