"""torch.distributed from the ``torchrun`` environment; the same code runs as one process.

DDP replicates the student (small and medium models); FSDP (``fully_shard``, one unit
per transformer block and per head) shards the student and its EMA (the teacher of
``dinoret train``) alike, so the EMA update pairs local shards. A frozen distillation
teacher is not wrapped: every rank holds it whole.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from dinoret.core.devices import resolve_device


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this module started the process group (and so ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30),
                                device_id=dev if dev.type == "cuda" else None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistContext(rank, dist.get_world_size() if dist.is_initialized() else 1, local_rank, dev, owns)


def teardown(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


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


def all_gather_object(obj: object) -> list:
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss terms averaged over ranks (one all-reduce for all of them)."""
    keys = sorted(values)
    stacked = torch.stack([values[k].float() for k in keys])
    if dist.is_initialized():
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
