"""Training under torch.distributed; the same code runs as one process.

DDP replicates the student (small and medium models); FSDP (``fully_shard``, one unit
per transformer block and per head) shards the student and its EMA (the teacher of
``dinoret train``) alike, so the EMA update pairs local shards. A frozen distillation
teacher is not wrapped: every rank holds it whole.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

# The process group itself (torchrun's environment, setup and teardown) is core's, shared with indexing.
from dinoret.core.distributed import DistContext, all_gather_object, barrier, setup, teardown  # noqa: F401


def choose_mode(requested: str, embed_dim: int, world_size: int) -> str:
    """"single" for one process; "auto" shards ViT-L and larger (embed_dim >= 1024)."""
    if world_size == 1:
        return "single"
    if requested == "auto":
        return "fsdp" if embed_dim >= 1024 else "ddp"
    return requested


def wrap(meta: nn.Module, mode: str, ctx: DistContext) -> None:
    """Wrap ``meta.student`` (and shard ``meta.ema`` alike under FSDP) in place."""
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
        for model in (meta.student, meta.ema):
            for block in model.backbone.blocks:
                fully_shard(block, mesh=mesh)
            for part in model.parts()[1:]:  # heads and projectors
                fully_shard(part, mesh=mesh)
            fully_shard(model, mesh=mesh)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms averaged over ranks (one all-reduce for all of them)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))

