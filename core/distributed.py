"""torch.distributed from the ``torchrun`` environment; the same code runs as one process.

Shared by training (DDP/FSDP, ``dinoret.trainer.distributed``) and indexing
(``dinoret.indexer.distributed_build``). torch is imported inside the functions that need
it: an index run that finds nothing to do asks :func:`env_world_size` and
:func:`env_rank` and must not pay for importing torch.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def env_world_size() -> int:
    """How many processes torchrun started for this job (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device | str  # "cpu" only from setup_for_arrays
    owns_group: bool = False  # this module started the process group (and so ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto", backend: str | None = None, timeout: timedelta = timedelta(minutes=30)) -> DistContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), else a single process.

    ``device``: "auto" and "cuda" become this process's own GPU (``cuda:LOCAL_RANK``).
    ``backend``: None picks NCCL for CUDA and gloo otherwise. A group that already exists
    is joined as it is (and left to whoever started it)."""
    import torch
    import torch.distributed as dist

    from dinoret.core.devices import resolve_device

    world = env_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timeout,
                                device_id=dev if backend == "nccl" else None)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistContext(rank, dist.get_world_size() if dist.is_initialized() else 1, local_rank, dev, owns)


def setup_for_arrays(device: str = "auto") -> DistContext:
    """:func:`setup` for work on numpy arrays that needs torch only for a GPU or for collectives
    (k-means of stored vectors): one CPU process gets a context whose device is the string
    ``"cpu"`` and imports no torch (about 0.5 GiB resident, a quarter of a million-vector
    clustering's memory budget)."""
    from dinoret.core.devices import device_type

    if env_world_size() == 1 and device_type(device) == "cpu":
        return DistContext(0, 1, 0, "cpu")
    return setup(device)


def teardown(ctx: DistContext) -> None:
    """End the process group :func:`setup` started (call it in a ``finally``).

    When the job ended without an exception, every rank first waits for the others and
    the job's objects are freed: a gloo collective still in flight when the group goes
    (FSDP's async gathers, a rank that is ahead) aborts the process at exit with
    "terminate called without an active exception". After an exception no rank waits:
    the others may never arrive."""
    import gc

    dist = _group()
    if not ctx.owns_group or dist is None:
        return
    gc.collect()
    if sys.exc_info()[0] is None:
        dist.barrier()
    dist.destroy_process_group()


def _group():
    """``torch.distributed`` when a process group is up, else None. A process that never
    imported torch has no group, so asking costs no torch import there."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def all_gather_object(obj: object, group=None) -> list:
    """``obj`` of every rank, by rank (``[obj]`` in a single process); ``group``: None for all ranks."""
    dist = _group()
    if dist is None:
        return [obj]
    out: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


def all_reduce_sum_(tensor: "torch.Tensor") -> "torch.Tensor":
    """Sum ``tensor`` over ranks in place (NCCL needs it on the GPU, gloo on the CPU)."""
    dist = _group()
    if dist is not None and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` as rank ``src`` has it, on every rank."""
    dist = _group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()
