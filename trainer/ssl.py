"""Student and EMA teacher, and one DINOv2 training step (``dinov2/train/ssl_meta_arch.py``).

The student is one module (backbone + DINO head + optional iBOT head) whose forward
runs the whole student pass, so DDP and FSDP wrap it as a unit; the teacher has the
same structure and is never wrapped by DDP (every rank computes the same EMA).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from dinoret.core.errors import UserError
from dinoret.trainer.heads import DINOHead
from dinoret.trainer.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from dinoret.core.models import BackboneConfig, DinoVisionTransformer

# The official ``vits.__dict__[arch]`` sizes.
ARCHS = {
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": dict(embed_dim=1536, depth=40, num_heads=24),
}


def backbone_config(cfg: dict, drop_path_rate: float = 0.0) -> BackboneConfig:
    """The backbone of ``cfg["student"]``; the teacher gets ``drop_path_rate=0``."""
    s = cfg["student"]
    if s["arch"] not in ARCHS:
        raise UserError(f"unknown student.arch {s['arch']!r}; choose one of: {', '.join(ARCHS)}")
    size = dict(ARCHS[s["arch"]], mlp_ratio=4.0)
    size.update({k: s[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio") if s.get(k) is not None})
    if size["embed_dim"] % size["num_heads"]:
        raise UserError(f"student.embed_dim {size['embed_dim']} is not divisible by num_heads {size['num_heads']}")
    return BackboneConfig(
        **size,
        patch_size=s["patch_size"],
        img_size=cfg["crops"]["global_crops_size"],
        ffn_layer="swiglu" if s["ffn_layer"] in ("swiglu", "swiglufused") else "mlp",
        num_register_tokens=s["num_register_tokens"],
        init_values=s["layerscale"] or None,
        interpolate_antialias=s["interpolate_antialias"],
        interpolate_offset=s["interpolate_offset"],
        drop_path_rate=drop_path_rate,
    )


class Student(nn.Module):
    """Backbone and heads; ``forward`` returns what the losses need (also used for the teacher)."""

    def __init__(self, cfg: dict, drop_path_rate: float = 0.0, drop_path_uniform: bool = False) -> None:
        super().__init__()
        self.backbone = DinoVisionTransformer(backbone_config(cfg, drop_path_rate))
        if drop_path_uniform:
            for blk in self.backbone.blocks:
                blk.drop_path = drop_path_rate
        d, ib = cfg["dino"], cfg["ibot"]
        dim = self.backbone.embed_dim
        self.dino_head = DINOHead(dim, d["head_n_prototypes"], d["head_nlayers"], d["head_hidden_dim"], d["head_bottleneck_dim"])
        self.ibot_head = (
            DINOHead(dim, ib["head_n_prototypes"], ib["head_nlayers"], ib["head_hidden_dim"], ib["head_bottleneck_dim"])
            if ib["loss_weight"] > 0 and ib["separate_head"] else None
        )
        self.do_ibot = ib["loss_weight"] > 0

    def forward(self, global_crops: Tensor, local_crops: Tensor | None = None, masks: Tensor | None = None,
                mask_indices: Tensor | None = None) -> dict[str, Tensor | None]:
        g = self.backbone.forward_features(global_crops, masks)
        heads_in = [g["x_norm_clstoken"]]
        if local_crops is not None:
            heads_in.append(self.backbone.forward_features(local_crops)["x_norm_clstoken"])
        patches = None
        if self.do_ibot:
            patches = g["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
            if self.ibot_head is None:
                heads_in.append(patches)
        # One head call for all tokens (the official code does the same with a block-diagonal mask).
        out = self.dino_head(torch.cat(heads_in)).split([len(t) for t in heads_in])
        masked_patch_head = None
        if self.do_ibot:
            masked_patch_head = self.ibot_head(patches) if self.ibot_head is not None else out[-1]
        return {
            "global_cls": g["x_norm_clstoken"],
            "global_cls_head": out[0],
            "local_cls_head": out[1] if local_crops is not None else None,
            "masked_patch_head": masked_patch_head,
        }


class SSLMetaArch(nn.Module):
    """Student, teacher, losses; ``student`` may be replaced by its DDP/FSDP wrapper."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg["student"]
        self.student = Student(cfg, s["drop_path_rate"], s["drop_path_uniform"])
        if s["pretrained_weights"]:
            self._load_pretrained(s["pretrained_weights"])
        self.teacher = Student(cfg)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(cfg["dino"]["head_n_prototypes"])
        ibot_dim = cfg["ibot"]["head_n_prototypes"] if cfg["ibot"]["separate_head"] else cfg["dino"]["head_n_prototypes"]
        self.ibot_loss = iBOTPatchLoss(ibot_dim)
        self.koleo_loss = KoLeoLoss()

    def _load_pretrained(self, path: str) -> None:
        """Start the student from backbone weights (any format dinoret.core.weights reads)."""
        from dinoret.core.weights import load_state_strict, read_checkpoint

        _, _, sd = read_checkpoint(path)
        load_state_strict(self.student.backbone, sd, path)

    def train(self, mode: bool = True) -> "SSLMetaArch":
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def student_module(self) -> Student:
        """The student without its DDP wrapper."""
        return getattr(self.student, "module", self.student)

    def forward_backward(self, batch: dict, teacher_temp: float, autocast: AbstractContextManager | None = None) -> dict[str, Tensor]:
        """Losses of one batch, back-propagated into the student; returns the displayed terms."""
        cfg, autocast = self.cfg, autocast or nullcontext()
        device = next(self.teacher.parameters()).device
        n_global, n_local = 2, cfg["crops"]["local_crops_number"]
        global_crops = batch["global_crops"].to(device, non_blocking=True)
        local_crops = batch["local_crops"].to(device, non_blocking=True) if n_local else None
        masks = batch["masks"].to(device, non_blocking=True)
        mask_indices = batch["mask_indices"].to(device, non_blocking=True)
        masks_weight = batch["masks_weight"].to(device, non_blocking=True)
        n_masked = batch["n_masked_patches"].to(device, non_blocking=True)
        do_ibot = cfg["ibot"]["loss_weight"] > 0

        with torch.no_grad(), autocast:
            t = self.teacher(global_crops, mask_indices=mask_indices)
        if hasattr(self.teacher, "reshard"):  # FSDP keeps the root unsharded after forward; no backward follows
            self.teacher.reshard()
        # Crop A of the student is matched with crop B of the teacher and vice versa.
        t_cls = torch.cat(t["global_cls_head"].chunk(n_global)[::-1]).float()
        t_patch = t["masked_patch_head"].float() if do_ibot else None
        if cfg["train"]["centering"] == "centering":
            t_dino = self.dino_loss.softmax_center_teacher(t_cls, teacher_temp)
            self.dino_loss.update_center(t_cls)
            if do_ibot:
                t_ibot = self.ibot_loss.softmax_center_teacher(t_patch, teacher_temp)
                self.ibot_loss.update_center(t_patch)
        else:
            t_dino = self.dino_loss.sinkhorn_knopp_teacher(t_cls, teacher_temp)
            if do_ibot:
                t_ibot = self.ibot_loss.sinkhorn_knopp_teacher(t_patch, teacher_temp, n_masked)
        t_dino = t_dino.view(n_global, -1, t_dino.shape[-1])

        with autocast:
            s = self.student(global_crops, local_crops, masks if do_ibot else None, mask_indices)
        n_terms = (n_global - 1) * n_global + max(n_local * n_global, 1)
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=device)
        w = cfg["dino"]["loss_weight"]
        if n_local:
            local = self.dino_loss(s["local_cls_head"].chunk(n_local), list(t_dino)) / n_terms
            losses["dino_local_crops_loss"] = local
            total = total + w * local
        glob = self.dino_loss([s["global_cls_head"]], [t_dino.flatten(0, 1)]) * 2 / n_terms
        losses["dino_global_crops_loss"] = glob
        total = total + w * glob
        if cfg["dino"]["koleo_loss_weight"] > 0:
            # Not between the two crops of one image: each crop set separately.
            koleo = cfg["dino"]["koleo_loss_weight"] * sum(self.koleo_loss(p) for p in s["global_cls"].chunk(2))
            losses["koleo_loss"] = koleo / 2
            total = total + koleo
        if do_ibot:
            ibot = self.ibot_loss.forward_masked(s["masked_patch_head"], t_ibot, masks, masks_weight) * 2 / n_global
            losses["ibot_loss"] = ibot / 2
            total = total + cfg["ibot"]["loss_weight"] * ibot
        total.backward()
        losses["total_loss"] = total.detach()
        return {k: v.detach() for k, v in losses.items()}

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher = m * teacher + (1 - m) * student, parameter by parameter (local shards under FSDP)."""
        local = [_local(p) for p in self.teacher.parameters()]
        student = [_local(p) for p in self.student_module.parameters()]
        torch._foreach_mul_(local, momentum)
        torch._foreach_add_(local, student, alpha=1 - momentum)


def _local(p: Tensor) -> Tensor:
    """This rank's shard of an FSDP (DTensor) parameter; the tensor itself otherwise."""
    return p.to_local() if isinstance(p, DTensor) else p
