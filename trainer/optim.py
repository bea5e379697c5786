"""AdamW parameter groups as DINOv2 builds them (``dinov2/utils/param_groups.py``).

Layer-wise lr decay (block i of n gets ``decay ** (n + 1 - (i + 1))``; embeddings
``decay ** (n + 1)``), a lower lr for the patch embedding, no weight decay on biases,
norms and LayerScale gammas, and a flag on the heads' last layer so it can be frozen.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

_EMBEDDINGS = ("pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens")


def lr_decay_rate(name: str, decay: float, num_layers: int) -> float:
    """``name`` relative to a backbone (``blocks.3.attn.qkv.weight``); ``num_layers`` 0 for heads."""
    layer_id = num_layers + 1
    if num_layers > 0:
        if any(e in name for e in _EMBEDDINGS):
            layer_id = 0
        elif name.startswith("blocks."):
            layer_id = int(name.split(".")[1]) + 1
    return decay ** (num_layers + 1 - layer_id)


def param_groups(module: nn.Module, layerwise_decay: float, patch_embed_lr_mult: float) -> list[dict]:
    """Fused groups (one per distinct multiplier set) for one student submodule."""
    blocks = getattr(module, "blocks", None)
    num_layers = len(blocks) if blocks is not None else 0
    fused: dict[tuple, dict] = defaultdict(lambda: {"params": []})
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult = lr_decay_rate(name, layerwise_decay, num_layers)
        if "patch_embed" in name:
            lr_mult *= patch_embed_lr_mult
        wd_mult = 0.0 if name.endswith(".bias") or "norm" in name or "gamma" in name else 1.0
        is_last = "last_layer" in name
        group = fused[(lr_mult, wd_mult, is_last)]
        group.update(lr_multiplier=lr_mult, wd_multiplier=wd_mult, is_last_layer=is_last)
        group["params"].append(param)
    return list(fused.values())


def build_optimizer(student_parts: Iterable[nn.Module], cfg: dict) -> torch.optim.AdamW:
    """One set of groups per student part (backbone, heads), as the official code does."""
    o = cfg["optim"]
    groups = []
    for m in student_parts:
        groups += param_groups(m, o["layerwise_decay"], o["patch_embed_lr_mult"])
    return torch.optim.AdamW(groups, betas=(o["adamw_beta1"], o["adamw_beta2"]), foreach=True)


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, wd: float, last_layer_lr: float) -> None:
    for g in optimizer.param_groups:
        g["weight_decay"] = wd * g["wd_multiplier"]
        g["lr"] = (last_layer_lr if g["is_last_layer"] else lr) * g["lr_multiplier"]
