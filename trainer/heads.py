"""The DINO / iBOT projection head: MLP, L2-normalised bottleneck, weight-normalised prototypes."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _mlp(nlayers: int, in_dim: int, bottleneck_dim: int, hidden_dim: int) -> nn.Module:
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim)
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
    for _ in range(nlayers - 2):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
    layers.append(nn.Linear(hidden_dim, bottleneck_dim))
    return nn.Sequential(*layers)


class DINOHead(nn.Module):
    """``dinov2/layers/dino_head.py`` (without batch norm, which DINOv2 does not use)."""

    def __init__(self, in_dim: int, out_dim: int, nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = _mlp(max(nlayers, 1), in_dim, bottleneck_dim, hidden_dim)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        with torch.no_grad():
            # The prototypes' norm starts at 1 (weight_g), so logits are cosine similarities.
            self.last_layer.parametrizations.weight.original0.fill_(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        x = nn.functional.normalize(x, dim=-1, p=2, eps=1e-6 if x.dtype == torch.float16 else 1e-12)
        return self.last_layer(x)
