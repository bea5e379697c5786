"""The DINOv2 training loop (``dinov2/train/train.py``) for one process or many (torchrun).

``train(files, load_image, output_dir, ...)`` writes into ``output_dir``:
``checkpoint_<iterations>.pth`` (every ``train.checkpoint_every`` iterations and at the
end), ``teacher_backbone.pth`` (official key layout), ``metrics.jsonl`` (one JSON
object per line: ``start``, ``step``, ``skip``, ``checkpoint``, ``end`` events),
``config.yaml`` and ``files.json`` (the file list, so a resumed run reads the same one).

The loop itself (:func:`run`) drives any meta-architecture (see :mod:`dinoret.trainer.ssl`):
distillation (:mod:`dinoret.trainer.distill`) is the same loop with another one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import DataLoader
from torch import nn
from tqdm import tqdm

from dinoret.core.devices import autocast as device_autocast
from dinoret.core.errors import UserError
from dinoret.core.files import atomic_write
from dinoret.trainer import checkpoint, distributed
from dinoret.trainer.config import make_config, scaled_lr, to_yaml, total_iterations
from dinoret.trainer.data import LoadImage, SSLBatches
from dinoret.trainer.export import check_exportable
from dinoret.trainer.optim import apply_schedules, build_optimizer
from dinoret.trainer.schedules import build_schedules
from dinoret.trainer.ssl import SSLMetaArch, backbone_config

log = logging.getLogger("dinoret.train")


def files_digest(files: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(files).encode("utf-8", "surrogateescape")).hexdigest()


def weights_digest(meta: nn.Module) -> str:
    """sha256 of the full weights of every saved module (collective under FSDP)."""
    h = hashlib.sha256()
    for module in meta.saved_modules().values():
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
        for key in sorted(state):
            h.update(key.encode())
            h.update(state[key].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "auto":
        return device_autocast(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class MetricsFile:
    """``metrics.jsonl``, written by rank 0; a resumed run drops the steps it will redo."""

    def __init__(self, path: Path, enabled: bool, resume_from: int | None) -> None:
        self.path, self.enabled = path, enabled
        if enabled and resume_from is not None and path.exists():
            kept = [
                line for line in path.read_text().splitlines()
                if line.strip() and not (json.loads(line).get("event") == "step"
                                         and json.loads(line)["iteration"] >= resume_from)
            ]
            path.write_text("".join(line + "\n" for line in kept))
        elif enabled and resume_from is None:
            path.write_text("")

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def _prepare_output(output_dir: Path, resume: bool, task: str) -> dict | None:
    existing = checkpoint.list_checkpoints(output_dir)
    if resume:
        state = checkpoint.latest(output_dir)
        if state is None:
            raise UserError(f"no checkpoint in {output_dir} to resume from")
        if state.get("task", "train") != task:
            raise UserError(f"{output_dir} holds a `dinoret {state.get('task', 'train')}` run, not a `dinoret {task}` run")
        return state
    if existing:
        raise UserError(
            f"{output_dir} already holds a training run ({existing[-1][1].name}): "
            "resume it, or choose another output folder", param=("resume", "output"))
    return None


# build(cfg, checkpoint state or None) -> a meta-architecture on the CPU (see dinoret.trainer.ssl)
Build = Callable[[dict, "dict | None"], nn.Module]


def train(files: Sequence[str] | None, load_image: LoadImage, output_dir: str | Path,
          config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (), resume: bool = False,
          stop_after: int | None = None, progress: bool = True) -> dict:
    """Train (or continue training) and return a summary.

    ``files``: the images (ignored when resuming: the run's ``files.json`` is used).
    ``load_image(path) -> PIL.Image`` raises for a file to skip; it must be picklable
    (a module-level function) when ``train.num_workers`` > 0.
    ``stop_after``: stop once this many iterations are done (as an interruption would).
    """
    return run("train", lambda cfg, state: SSLMetaArch(cfg), files, load_image, output_dir, config_files,
               overrides, resume, stop_after, progress)


def run(task: str, build: Build, files: Sequence[str] | None, load_image: LoadImage, output_dir: str | Path,
        config_files: Sequence[str | Path] = (), overrides: Sequence[str] = (), resume: bool = False,
        stop_after: int | None = None, progress: bool = True, defaults: dict | None = None) -> dict:
    """The training loop for the meta-architecture ``build`` makes; ``task`` names the run kind
    (a run is resumed only by the same kind); ``defaults``: the config before files and ``--set``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    state = _prepare_output(output_dir, resume, task)
    if state is not None:
        cfg = make_config(config_files, overrides, base=state["config"])
        if cfg != state["config"]:
            log.warning("config changed on resume: the run will not repeat an uninterrupted one exactly")
        files = json.loads((output_dir / "files.json").read_text())
    else:
        cfg = make_config(config_files, overrides, base=defaults)
        if not files:
            raise UserError("no images to train on")
        files = [str(f) for f in files]

    ctx = distributed.setup(cfg["train"]["device"])
    try:
        return _run(cfg, files, load_image, output_dir, state, ctx, stop_after, progress, build)
    finally:
        distributed.teardown(ctx)


def _run(cfg: dict, files: list[str], load_image: LoadImage, output_dir: Path, state: dict | None,
         ctx: distributed.DistContext, stop_after: int | None, progress: bool, build: Build) -> dict:
    t_cfg = cfg["train"]
    digests = distributed.all_gather_object(files_digest(files))
    if len(set(digests)) > 1:
        raise UserError("the ranks found different training files: give every rank the same DATA_DIR")
    total = total_iterations(cfg)
    start = state["iteration"] if state else 0
    if ctx.is_main and state is None:
        atomic_write(output_dir / "files.json", json.dumps(files).encode("utf-8", "surrogateescape"))
    if ctx.is_main and (state is None or cfg != state["config"]):  # --set on --resume changes the run's config
        atomic_write(output_dir / "config.yaml", to_yaml(cfg))

    name = check_exportable(backbone_config(cfg))
    _seed_everything(t_cfg["seed"])  # the same initial weights on every rank
    meta = build(cfg, state).to(ctx.device)
    mode = distributed.choose_mode(t_cfg["distributed"], meta.student.backbone.embed_dim, ctx.world_size)
    distributed.wrap(meta, mode, ctx)
    meta.train()
    submodules = meta.trainable_parts()
    optimizer = build_optimizer(submodules, cfg)
    lr = scaled_lr(cfg, ctx.world_size)
    schedules = build_schedules(cfg, lr)
    _seed_everything(t_cfg["seed"] + ctx.rank)  # the official fix_random_seeds(seed + rank)
    if state is not None:
        checkpoint.restore(state, meta, optimizer, ctx)
    extra = {
        "backbone_name": name,
        "backbone_config": backbone_config(cfg).to_dict(),
        "config": cfg,
        "files_sha256": digests[0],
        "images_seen": state["images_seen"] if state else 0,
        "skipped": dict(state["skipped"]) if state else {},
        **meta.checkpoint_extra(),
    }
    metrics = MetricsFile(output_dir / "metrics.jsonl", ctx.is_main, start if state else None)
    global_batch = t_cfg["batch_size_per_gpu"] * ctx.world_size
    metrics.write(event="start", iteration=start, total_iterations=total, world_size=ctx.world_size, mode=mode,
                  device=str(ctx.device), files=len(files), lr=lr, global_batch=global_batch,
                  resumed_from=state.get("path") if state else None, time=time.time())

    dataset = SSLBatches(files, load_image, cfg, ctx.rank, ctx.world_size)
    workers = min(int(t_cfg["num_workers"]), os.cpu_count() or 1)
    end = total if stop_after is None else min(total, stop_after)
    loader = DataLoader(dataset, batch_size=None, sampler=range(start, end), num_workers=workers,
                        pin_memory=ctx.device.type == "cuda", prefetch_factor=2 if workers else None,
                        # Its own generator: the loader's base seed must not consume the training RNG.
                        generator=torch.Generator().manual_seed(t_cfg["seed"]))
    bar = tqdm(total=total, initial=start, disable=not (progress and ctx.is_main), unit="it", dynamic_ncols=True,
               desc=meta.task)
    done, last, rates = start, {}, []
    tick = time.perf_counter()
    try:
        for batch in loader:
            it = batch["iteration"]
            _record_skips(batch["skipped"], extra["skipped"], metrics, bar, it)
            s = schedules.at(it)
            apply_schedules(optimizer, s["lr"], s["wd"], s["last_layer_lr"])
            optimizer.zero_grad(set_to_none=True)
            losses = meta.forward_backward(batch, s["teacher_temp"], _precision_context(ctx.device, t_cfg["precision"]))
            if cfg["optim"]["clip_grad"]:
                for m in submodules:
                    torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["optim"]["clip_grad"])
            optimizer.step()
            meta.update_ema(s["mom"])
            last = distributed.mean_over_ranks(losses)
            if not math.isfinite(last["total_loss"]):
                raise UserError(f"the loss became {last['total_loss']} at iteration {it}: lower optim.base_lr")
            done = it + 1
            extra["images_seen"] += global_batch
            now = time.perf_counter()
            rates.append(global_batch / max(now - tick, 1e-9))
            tick = now
            metrics.write(event="step", iteration=it, **last, **s, images_per_s=rates[-1],
                          images_seen=extra["images_seen"], skipped_files=len(extra["skipped"]), time=time.time())
            bar.set_postfix(_postfix(last, s, rates), refresh=False)
            bar.update(1)
            if done % t_cfg["checkpoint_every"] == 0 and done < total:
                _save(output_dir, meta, optimizer, done, ctx, extra, t_cfg["keep_checkpoints"], metrics)
    except KeyboardInterrupt:
        if ctx.world_size == 1 and done > start:  # a collective save is unsafe when only some ranks stopped
            _save(output_dir, meta, optimizer, done, ctx, extra, t_cfg["keep_checkpoints"], metrics)
        raise
    finally:
        bar.close()
    if done == total:
        _save(output_dir, meta, optimizer, done, ctx, extra, t_cfg["keep_checkpoints"], metrics)
    hashes = distributed.all_gather_object(weights_digest(meta))
    metrics.write(event="end", iteration=done, weights_sha256=hashes, time=time.time())
    return {
        "iterations": done,
        "total_iterations": total,
        "losses": last,
        "images_per_s": float(np.mean(rates[len(rates) // 5:])) if rates else 0.0,
        "skipped": dict(extra["skipped"]),
        "output": str(output_dir),
        "weights_sha256": hashes,
    }


def _save(output_dir: Path, meta, optimizer, done: int, ctx, extra: dict, keep: int, metrics: MetricsFile) -> None:
    path = checkpoint.save(output_dir, meta, optimizer, done, ctx, extra, keep)
    if path is not None:
        metrics.write(event="checkpoint", iteration=done, path=str(path), time=time.time())


def _record_skips(new: list, skipped: dict, metrics: MetricsFile, bar: tqdm, it: int) -> None:
    """Count and log files that could not be read (gathered from all ranks)."""
    for batch_skips in distributed.all_gather_object(list(new)):
        for path, reason in batch_skips:
            if path not in skipped:
                skipped[path] = reason
                metrics.write(event="skip", iteration=it, path=path, reason=reason)
                if metrics.enabled:
                    bar.write(f"skipped {path}: {reason}")


def _postfix(losses: dict, s: dict, rates: list[float]) -> dict:
    recent = rates[-10:]
    out = {"loss": f"{losses['total_loss']:.3f}"}
    if "dino_global_crops_loss" in losses:
        out["dino"] = f"{losses.get('dino_local_crops_loss', 0) + losses['dino_global_crops_loss']:.3f}"
    for key, short in (("ibot_loss", "ibot"), ("feature_cls_loss", "cls"), ("feature_patch_loss", "patch"),
                       ("koleo_loss", "koleo")):
        if key in losses:
            out[short] = f"{losses[key]:.3f}"
    out.update(lr=f"{s['lr']:.2e}", mom=f"{s['mom']:.4f}", img_s=f"{sum(recent) / len(recent):.1f}")
    return out
