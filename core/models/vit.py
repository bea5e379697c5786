"""DINOv2 Vision Transformer, parameter-for-parameter compatible with the official code.

Parameter names and shapes follow facebookresearch/dinov2 (``block_chunks=0``, as the
hub checkpoints are saved), so an official ``dinov2_vit*14*_pretrain.pth`` loads with
``strict=True``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that fixes a backbone's architecture; stored in checkpoints and catalogs."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    patch_size: int = 14
    img_size: int = 518
    ffn_layer: str = "mlp"  # "mlp" or "swiglu" (ViT-g)
    num_register_tokens: int = 0
    init_values: float | None = 1.0  # LayerScale init; None disables LayerScale
    interpolate_antialias: bool = False
    interpolate_offset: float = 0.1
    drop_path_rate: float = 0.0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "extra"}
        return cls(**known)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, device=device)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input {h}x{w} is not a multiple of patch size {self.patch_size}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True, device=device)
        self.proj = nn.Linear(dim, dim, bias=True, device=device)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """The official ``SwiGLUFFNFused``: hidden width 2/3 of the MLP's, rounded up to 8."""

    def __init__(self, dim: int, hidden: int, device: torch.device | str | None = None) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden, device=device)
        self.w3 = nn.Linear(hidden, dim, device=device)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values), device=device))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - p)
    return x * keep / (1 - p)


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig, drop_path_rate: float, device: torch.device | str | None = None) -> None:
        super().__init__()
        dim = cfg.embed_dim
        norm = partial(nn.LayerNorm, eps=1e-6, device=device)
        ffn = SwiGLUFFN if cfg.ffn_layer in ("swiglu", "swiglufused") else Mlp
        self.norm1 = norm(dim)
        self.attn = Attention(dim, cfg.num_heads, device)
        self.ls1 = LayerScale(dim, cfg.init_values, device) if cfg.init_values else nn.Identity()
        self.norm2 = norm(dim)
        self.mlp = ffn(dim, int(dim * cfg.mlp_ratio), device)
        self.ls2 = LayerScale(dim, cfg.init_values, device) if cfg.init_values else nn.Identity()
        self.drop_path = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.ls1(self.attn(self.norm1(x))), self.drop_path, self.training)
        return x + drop_path(self.ls2(self.mlp(self.norm2(x))), self.drop_path, self.training)


class DinoVisionTransformer(nn.Module):
    """The backbone of ``cfg``, randomly initialised as the official code does. ``device="meta"``
    builds it with no memory and no initialisation, for weights to be assigned next
    (``load_state_dict(..., assign=True)``): a load then costs no random numbers."""

    def __init__(self, cfg: BackboneConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_dim = self.num_features = cfg.embed_dim
        self.patch_size = cfg.patch_size
        self.num_register_tokens = cfg.num_register_tokens
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, cfg.embed_dim, device)
        num_patches = (cfg.img_size // cfg.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim, device=device))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, cfg.embed_dim, device=device))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, cfg.num_register_tokens, cfg.embed_dim, device=device))
            if cfg.num_register_tokens else None
        )
        # Stochastic depth grows linearly with depth, as in the official code.
        rates = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, r, device) for r in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6, device=device)
        self.head = nn.Identity()
        self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim, device=device))
        if torch.device(device or "cpu").type != "meta":
            self.init_weights()

    def init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.register_tokens is not None:
            nn.init.normal_(self.register_tokens, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, x: Tensor, h: int, w: int) -> Tensor:
        """Bicubic resize of the patch position grid, exactly as the official code does it.

        The official code passes a scale factor of ``(n + offset) / M`` when the offset
        is non-zero (offset 0.1 for the original models, kept for bit-compatibility) and
        an output size otherwise (the ``_reg`` models, which also antialias).
        """
        npatch = x.shape[1] - 1
        n = self.pos_embed.shape[1] - 1
        if npatch == n and h == w:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        dim = x.shape[-1]
        h0, w0 = h // self.patch_size, w // self.patch_size
        m = int(math.sqrt(n))
        if m * m != n:
            raise ValueError(f"position embedding of {n} patches is not a square grid")
        kwargs: dict = {}
        if self.cfg.interpolate_offset:
            kwargs["scale_factor"] = (
                float(h0 + self.cfg.interpolate_offset) / m,
                float(w0 + self.cfg.interpolate_offset) / m,
            )
        else:
            kwargs["size"] = (h0, w0)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2),
            mode="bicubic",
            antialias=self.cfg.interpolate_antialias,
            **kwargs,
        )
        assert patch_pos.shape[-2:] == (h0, w0)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((cls_pos, patch_pos), dim=1).to(x.dtype)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        _, _, h, w = x.shape
        x = self.patch_embed(x)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.interpolate_pos_encoding(x, h, w)
        if self.register_tokens is not None:
            x = torch.cat((x[:, :1], self.register_tokens.expand(x.shape[0], -1, -1), x[:, 1:]), dim=1)
        return x

    def forward_features(self, x: Tensor, masks: Tensor | None = None) -> dict[str, Tensor]:
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            x = blk(x)
        x_norm = self.norm(x)
        r = self.num_register_tokens
        return {
            "x_norm_clstoken": x_norm[:, 0],
            "x_norm_regtokens": x_norm[:, 1 : r + 1],
            "x_norm_patchtokens": x_norm[:, r + 1 :],
            "x_prenorm": x,
            "masks": masks,
        }

    def forward(self, x: Tensor) -> Tensor:
        """Class token after the final norm: the DINOv2 image embedding."""
        return self.forward_features(x)["x_norm_clstoken"]
