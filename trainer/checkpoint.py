"""Training checkpoints: written atomically, enough to continue bit for bit.

A checkpoint holds the meta-architecture's saved modules (student and teacher for
``dinoret train``; student and its EMA for ``dinoret distill``), optimizer, the loss
centres, the iteration to run next, the config, and every rank's RNG states. Batches are a
function of the iteration (:mod:`dinoret.trainer.data`), so the iteration is the data
position. The file is also a weights file: ``{"dinoret": "train", "backbone_name",
"backbone_config", "final", <final>}`` (``final`` names the entry holding the result,
``teacher`` when absent) is the format :func:`dinoret.core.weights.read_checkpoint` reads,
and everything in it loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from dinoret.core.errors import UserError
from dinoret.core.files import atomic_path
from dinoret.trainer.distributed import DistContext, all_gather_object
from dinoret.trainer.export import export_backbone

log = logging.getLogger("dinoret.train")

_NAME = re.compile(r"^checkpoint_(\d+)\.pth$")
# Full (unsharded) tensors, gathered on rank 0 only and moved to the CPU.
_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_LOAD = StateDictOptions(full_state_dict=True)


def checkpoint_path(output_dir: Path, iteration: int) -> Path:
    return Path(output_dir) / f"checkpoint_{iteration:07d}.pth"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(iterations done, path), oldest first."""
    found = []
    for p in Path(output_dir).glob("checkpoint_*.pth"):
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def capture_rng() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(state["python"])


def save(output_dir: Path, meta, optimizer: torch.optim.Optimizer, iteration: int, ctx: DistContext,
         extra: dict, keep: int) -> Path | None:
    """Collective (every rank calls it); rank 0 writes ``checkpoint_<iteration>.pth`` and
    the result's backbone (``meta.export_name``) and drops all but the newest ``keep`` checkpoints."""
    modules = {name: get_model_state_dict(m, options=_GATHER) for name, m in meta.saved_modules().items()}
    optim = get_optimizer_state_dict(meta.student, optimizer, options=_GATHER)
    rng = all_gather_object(capture_rng())
    if not ctx.is_main:
        return None
    state = {
        **extra,
        "dinoret": "train",
        "task": meta.task,
        "final": meta.final_key,
        "iteration": iteration,
        "world_size": ctx.world_size,
        **modules,
        "optimizer": optim,
        **meta.loss_state(),
        "rng": rng,
    }
    path = checkpoint_path(output_dir, iteration)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    export_backbone(modules[meta.final_key], Path(output_dir) / meta.export_name)
    for _, old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise UserError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or state.get("dinoret") != "train" or "optimizer" not in state:
        raise UserError(f"{path} is not a dinoret training checkpoint")
    return state


def latest(output_dir: Path) -> dict | None:
    """The newest checkpoint that reads, or None when there is none."""
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            state = read(path)
        except UserError as e:
            log.warning("%s; trying an older checkpoint", e)
            continue
        state["path"] = str(path)
        return state
    return None


def restore(state: dict, meta, optimizer: torch.optim.Optimizer, ctx: DistContext) -> None:
    """Load a checkpoint read by every rank into the (possibly wrapped) model and optimizer."""
    for name, module in meta.saved_modules().items():
        set_model_state_dict(module, state[name], options=_LOAD)
    set_optimizer_state_dict(meta.student, optimizer, state["optimizer"], options=_LOAD)
    meta.load_loss_state(state)
    if state["world_size"] == ctx.world_size:
        restore_rng(state["rng"][ctx.rank])
    else:
        log.warning("checkpoint was written by %d processes, resuming with %d: random streams restart",
                    state["world_size"], ctx.world_size)
