"""``teacher_backbone.pth`` / ``student_backbone.pth``: a backbone as a bare state dict in the official key layout.

Such a file carries no architecture, so :func:`dinoret.core.weights.infer_config` reads it
back from the tensor shapes and the DINOv2 conventions (64-dim heads for non-official
sizes, interpolation settings by register count). :func:`check_exportable` refuses, at
the start of a run, an architecture that would not be read back as trained.
"""
from __future__ import annotations

from pathlib import Path

import torch

from dinoret.core.errors import UserError
from dinoret.core.files import atomic_path
from dinoret.core.models import BackboneConfig, DinoVisionTransformer

# What decides how a loaded backbone computes (init values and drop path do not).
_COMPARED = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "img_size", "ffn_layer",
             "num_register_tokens", "interpolate_antialias", "interpolate_offset")


def backbone_state(model_state: dict) -> dict:
    """``backbone.*`` keys of a student or teacher state dict, prefix removed (the official layout)."""
    return {k.removeprefix("backbone."): v for k, v in model_state.items() if k.startswith("backbone.")}


def export_backbone(model_state: dict, path: str | Path) -> None:
    """Write a backbone in the official key layout (a crash leaves the previous file or this one)."""
    with atomic_path(path) as tmp:
        torch.save(backbone_state(model_state), tmp)


def check_exportable(cfg: BackboneConfig) -> str:
    """The model name the exported file will load as ("custom" for non-official sizes);
    raises if the file would load as a different architecture."""
    from dinoret.core.weights import infer_config

    with torch.device("meta"):
        shapes = DinoVisionTransformer(cfg).state_dict()
    name, inferred = infer_config(shapes)
    wrong = [
        f"{k}={getattr(cfg, k)} (would load as {getattr(inferred, k)})"
        for k in _COMPARED
        if getattr(cfg, k) != getattr(inferred, k)
    ]
    if (cfg.init_values is None) != (inferred.init_values is None):
        wrong.append("layerscale")
    if wrong:
        raise UserError(
            "teacher_backbone.pth (official key layout) could not describe this backbone: "
            + ", ".join(wrong)
            + "; use num_heads = embed_dim / 64 for non-official sizes, and interpolate_offset 0.0 with "
            "interpolate_antialias true for register models"
        )
    return name or "custom"
