"""Student and EMA teacher, and one DINOv2 training step (``dinov2/train/ssl_meta_arch.py``).

The student is one module (backbone + DINO head + optional iBOT head) whose forward
runs the whole student pass, so DDP and FSDP wrap it as a unit; the teacher has the
same structure and is never wrapped by DDP (every rank computes the same EMA).
:class:`DinoObjective` (targets and losses) is shared with distillation
(:mod:`dinoret.trainer.distill`), where the teacher is a frozen larger model.

A meta-architecture (this module's :class:`SSLMetaArch`, or ``DistillMetaArch``) is what
the training loop (:mod:`dinoret.trainer.train`) drives: ``student`` (trained, possibly
wrapped), ``ema`` (the exponential moving average of the student), ``trainable_parts()``,
``forward_backward()``, ``update_ema()``, ``saved_modules()``, ``loss_state()`` /
``load_loss_state()``, ``checkpoint_extra()``, and ``task`` / ``final_key`` / ``export_name``: which checkpoint
entry is the result and the file its backbone is exported to.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from dinoret.core.errors import UserError
from dinoret.core.models import BackboneConfig, DinoVisionTransformer
from dinoret.trainer.heads import DINOHead
from dinoret.trainer.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss

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


def _projector(in_dim: int, out_dim: int) -> nn.Module:
    """A small MLP from the student's width to the teacher's (feature distillation)."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class Student(nn.Module):
    """Backbone and heads; ``forward`` returns what the losses need (also used for teachers).

    ``dino_head`` None: a backbone alone (a teacher with no heads). ``feature_dim``: add
    projectors of the class and patch tokens to that width (feature distillation).
    """

    def __init__(self, backbone: DinoVisionTransformer, dino_head: DINOHead | None = None,
                 ibot_head: DINOHead | None = None, do_ibot: bool = False, feature_dim: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.dino_head = dino_head
        self.ibot_head = ibot_head
        self.do_ibot = do_ibot and dino_head is not None
        dim = backbone.embed_dim
        self.cls_projector = _projector(dim, feature_dim) if feature_dim else None
        self.patch_projector = _projector(dim, feature_dim) if feature_dim else None

    @classmethod
    def from_config(cls, cfg: dict, drop_path_rate: float = 0.0, drop_path_uniform: bool = False,
                    heads: bool = True, feature_dim: int | None = None) -> "Student":
        """The student of ``cfg`` (``student.*``, ``dino.*``, ``ibot.*``)."""
        backbone = DinoVisionTransformer(backbone_config(cfg, drop_path_rate))
        if drop_path_uniform:
            for blk in backbone.blocks:
                blk.drop_path = drop_path_rate
        d, ib = cfg["dino"], cfg["ibot"]
        dim = backbone.embed_dim
        dino_head = ibot_head = None
        if heads:
            dino_head = DINOHead(dim, d["head_n_prototypes"], d["head_nlayers"], d["head_hidden_dim"], d["head_bottleneck_dim"])
            if ib["loss_weight"] > 0 and ib["separate_head"]:
                ibot_head = DINOHead(dim, ib["head_n_prototypes"], ib["head_nlayers"], ib["head_hidden_dim"],
                                     ib["head_bottleneck_dim"])
        return cls(backbone, dino_head, ibot_head, ib["loss_weight"] > 0, feature_dim)

    def parts(self) -> list[nn.Module]:
        """Backbone, then each head or projector: one optimizer group set and one clipping norm each."""
        return [m for m in (self.backbone, self.dino_head, self.ibot_head, self.cls_projector, self.patch_projector)
                if m is not None]

    def forward(self, global_crops: Tensor, local_crops: Tensor | None = None, masks: Tensor | None = None,
                mask_indices: Tensor | None = None, projections: bool = True) -> dict[str, Tensor | None]:
        """``projections`` False: skip the feature projectors (an EMA that only gives head targets)."""
        g = self.backbone.forward_features(global_crops, masks)
        local = self.backbone.forward_features(local_crops)["x_norm_clstoken"] if local_crops is not None else None
        out: dict[str, Tensor | None] = {"global_cls": g["x_norm_clstoken"], "global_patch": g["x_norm_patchtokens"],
                                         "local_cls": local}
        if self.cls_projector is not None and projections:
            out["global_cls_proj"] = self.cls_projector(g["x_norm_clstoken"])
            out["local_cls_proj"] = self.cls_projector(local) if local is not None else None
            out["global_patch_proj"] = self.patch_projector(g["x_norm_patchtokens"])
        if self.dino_head is None:
            return out
        heads_in = [g["x_norm_clstoken"]] + ([local] if local is not None else [])
        patches = None
        if self.do_ibot:
            patches = g["x_norm_patchtokens"].flatten(0, 1).index_select(0, mask_indices)
            if self.ibot_head is None:
                heads_in.append(patches)
        # One head call for all tokens (the official code does the same with a block-diagonal mask).
        heads_out = self.dino_head(torch.cat(heads_in)).split([len(t) for t in heads_in])
        masked_patch_head = None
        if self.do_ibot:
            masked_patch_head = self.ibot_head(patches) if self.ibot_head is not None else heads_out[-1]
        out.update(global_cls_head=heads_out[0], local_cls_head=heads_out[1] if local is not None else None,
                   masked_patch_head=masked_patch_head)
        return out


class DinoObjective(nn.Module):
    """DINO (class tokens) + iBOT (patch tokens) + KoLeo, given a teacher's and a student's head outputs.

    Holds the loss centres (the state of ``train.centering: centering``).
    """

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        self.dino_loss = DINOLoss(cfg["dino"]["head_n_prototypes"])
        ibot_dim = cfg["ibot"]["head_n_prototypes"] if cfg["ibot"]["separate_head"] else cfg["dino"]["head_n_prototypes"]
        self.ibot_loss = iBOTPatchLoss(ibot_dim)
        self.koleo_loss = KoLeoLoss()

    @property
    def do_ibot(self) -> bool:
        return self.cfg["ibot"]["loss_weight"] > 0

    @torch.no_grad()
    def targets(self, teacher_out: dict, teacher_temp: float, n_masked: Tensor, n_global: int = 2
                ) -> tuple[Tensor, Tensor | None]:
        """The teacher's centred, sharpened targets: class tokens [n_global, B, K] with crop A
        matched to the student's crop B and vice versa, and masked patches [M, K]."""
        t_cls = torch.cat(teacher_out["global_cls_head"].chunk(n_global)[::-1]).float()
        t_patch = teacher_out["masked_patch_head"].float() if self.do_ibot else None
        t_ibot = None
        if self.cfg["train"]["centering"] == "centering":
            t_dino = self.dino_loss.softmax_center_teacher(t_cls, teacher_temp)
            self.dino_loss.update_center(t_cls)
            if t_patch is not None:
                t_ibot = self.ibot_loss.softmax_center_teacher(t_patch, teacher_temp)
                self.ibot_loss.update_center(t_patch)
        else:
            t_dino = self.dino_loss.sinkhorn_knopp_teacher(t_cls, teacher_temp)
            if t_patch is not None:
                t_ibot = self.ibot_loss.sinkhorn_knopp_teacher(t_patch, teacher_temp, n_masked)
        return t_dino.view(n_global, -1, t_dino.shape[-1]), t_ibot

    def forward(self, s: dict, t_dino: Tensor, t_ibot: Tensor | None, masks: Tensor, masks_weight: Tensor,
                n_local: int, n_global: int = 2) -> tuple[Tensor, dict[str, Tensor]]:
        """(total loss, the displayed terms), scaled and named as the official code does."""
        cfg = self.cfg
        n_terms = (n_global - 1) * n_global + max(n_local * n_global, 1)
        losses: dict[str, Tensor] = {}
        total = torch.zeros((), device=t_dino.device)
        w = cfg["dino"]["loss_weight"]
        if n_local:
            local = self.dino_loss(s["local_cls_head"].chunk(n_local), list(t_dino)) / n_terms
            losses["dino_local_crops_loss"] = local
            total = total + w * local
        glob = self.dino_loss([s["global_cls_head"]], [t_dino.flatten(0, 1)]) * 2 / n_terms
        losses["dino_global_crops_loss"] = glob
        total = total + w * glob
        if cfg["dino"]["koleo_loss_weight"] > 0:
            total = total + self._koleo(s, losses)
        if t_ibot is not None:
            ibot = self.ibot_loss.forward_masked(s["masked_patch_head"], t_ibot, masks, masks_weight) * 2 / n_global
            losses["ibot_loss"] = ibot / 2
            total = total + cfg["ibot"]["loss_weight"] * ibot
        return total, losses

    def _koleo(self, s: dict, losses: dict) -> Tensor:
        # Not between the two crops of one image: each crop set separately.
        koleo = self.cfg["dino"]["koleo_loss_weight"] * sum(self.koleo_loss(p) for p in s["global_cls"].chunk(2))
        losses["koleo_loss"] = koleo / 2
        return koleo

    def loss_state(self) -> dict[str, Tensor]:
        return {"dino_center": self.dino_loss.center.detach().cpu(), "ibot_center": self.ibot_loss.center.detach().cpu()}

    def load_loss_state(self, state: dict) -> None:
        self.dino_loss.center.copy_(state["dino_center"])
        self.ibot_loss.center.copy_(state["ibot_center"])


def load_pretrained(backbone: DinoVisionTransformer, path: str) -> None:
    """Start a student's backbone from weights (any format dinoret.core.weights reads)."""
    from dinoret.core.weights import load_state_strict, read_checkpoint

    load_state_strict(backbone, read_checkpoint(path)[2], path)


def batch_to(batch: dict, device: torch.device) -> dict:
    """The tensors of a collated batch on ``device``."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class MetaArch(nn.Module):
    """What the training loop drives (see the module docstring). Subclasses set ``student``,
    ``ema`` and ``objective``, and the class attributes ``task``, ``final_key``, ``export_name``."""

    task: str
    final_key: str
    export_name: str

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (kept in eval mode)."""
        return [self.ema]

    def train(self, mode: bool = True) -> "MetaArch":
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    @property
    def student_module(self) -> Student:
        """The student without its DDP wrapper."""
        return getattr(self.student, "module", self.student)

    def trainable_parts(self) -> list[nn.Module]:
        return self.student_module.parts()

    def loss_state(self) -> dict[str, Tensor]:
        return self.objective.loss_state()

    def load_loss_state(self, state: dict) -> None:
        self.objective.load_loss_state(state)

    def checkpoint_extra(self) -> dict:
        """What a checkpoint records besides weights, optimizer and loss state."""
        return {}

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """ema = m * ema + (1 - m) * student, parameter by parameter (local shards under FSDP)."""
        ema_update(self.ema, self.student_module, momentum)


class SSLMetaArch(MetaArch):
    """Student, teacher, losses; ``student`` may be replaced by its DDP/FSDP wrapper."""

    task = "train"
    final_key = "teacher"  # the checkpoint entry that is the result
    export_name = "teacher_backbone.pth"

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        s = cfg["student"]
        self.student = Student.from_config(cfg, s["drop_path_rate"], s["drop_path_uniform"])
        if s["pretrained_weights"]:
            load_pretrained(self.student.backbone, s["pretrained_weights"])
        self.teacher = Student.from_config(cfg)
        self.teacher.load_state_dict(self.student.state_dict())
        self.teacher.requires_grad_(False)
        self.objective = DinoObjective(cfg)
        if not self.objective.do_ibot:  # never masked: no gradient, no optimizer state (resume needs all or none)
            self.student.backbone.mask_token.requires_grad_(False)

    @property
    def ema(self) -> Student:
        """The EMA of the student: here the teacher itself."""
        return self.teacher

    def saved_modules(self) -> dict[str, nn.Module]:
        return {"student": self.student, "teacher": self.teacher}

    def forward_backward(self, batch: dict, teacher_temp: float, autocast: AbstractContextManager | None = None) -> dict[str, Tensor]:
        """Losses of one batch, back-propagated into the student; returns the displayed terms."""
        cfg, autocast = self.cfg, autocast or nullcontext()
        b = batch_to(batch, next(self.teacher.parameters()).device)
        n_local = cfg["crops"]["local_crops_number"]
        do_ibot = self.objective.do_ibot

        with torch.no_grad(), autocast:
            t = self.teacher(b["global_crops"], mask_indices=b["mask_indices"])
        if hasattr(self.teacher, "reshard"):  # FSDP keeps the root unsharded after forward; no backward follows
            self.teacher.reshard()
        t_dino, t_ibot = self.objective.targets(t, teacher_temp, b["n_masked_patches"])
        with autocast:
            s = self.student(b["global_crops"], b["local_crops"] if n_local else None,
                             b["masks"] if do_ibot else None, b["mask_indices"])
        total, losses = self.objective(s, t_dino, t_ibot, b["masks"], b["masks_weight"], n_local)
        total.backward()
        losses["total_loss"] = total.detach()
        return {k: v.detach() for k, v in losses.items()}


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, momentum: float) -> None:
    """ema = m * ema + (1 - m) * model over matching parameters (this rank's shards under FSDP)."""
    local = [_local(p) for p in ema.parameters()]
    current = [_local(p) for p in model.parameters()]
    torch._foreach_mul_(local, momentum)
    torch._foreach_add_(local, current, alpha=1 - momentum)


def _local(p: Tensor) -> Tensor:
    """This rank's shard of an FSDP (DTensor) parameter; the tensor itself otherwise."""
    return p.to_local() if isinstance(p, DTensor) else p
