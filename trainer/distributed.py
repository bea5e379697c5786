"""torch.distributed from the ``torchrun`` environment; the same code runs as one process.

DDP replicates the student (small and medium models); FSDP (``fully_shard``, one unit
per transformer block and per head) shards student and teacher alike, so the EMA
update pairs local shards.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

# The process-group plumbing is shared with curation (retrieval must not import the trainer).
from dinoret.core.distributed import DistContext, all_gather_object, barrier, setup, teardown  # noqa: F401


def choose_mode(requested: str, embed_dim: int, world_size: int) -> str:
    """"single" for one process; "auto" shards ViT-L and larger (embed_dim >= 1024)."""
    if world_size == 1:
        return "single"
    if requested == "auto":
        return "fsdp" if embed_dim >= 1024 else "ddp"
    return requested


def wrap(meta: nn.Module, mode: str, ctx: DistContext) -> None:
    """Wrap ``meta.student`` (and shard ``meta.teacher`` under FSDP) in place."""
    if mode == "ddp":
        meta.student = nn.parallel.DistributedDataParallel(
            meta.student, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    elif mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The student's outputs are split views that are only read, never modified in place.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for model in (meta.student, meta.teacher):
            for block in model.backbone.blocks:
                fully_shard(block, mesh=mesh)
            for head in (model.dino_head, model.ibot_head):
                if head is not None:
                    fully_shard(head, mesh=mesh)
            fully_shard(model, mesh=mesh)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms averaged over ranks (one all-reduce for all of them)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))
