"""Training throughput of the DINOv2 recipe for ViT-S/14 (configs/vits14.yaml) on this device.

One iteration is the whole step ``dinoret train`` runs: teacher forward, student forward
on 2 global (224 px) + 8 local (98 px) crops with iBOT masks, DINO + iBOT + KoLeo losses,
backward, gradient clipping, AdamW, EMA update. Batches are made once from random pixels
beforehand, so the figure is the model's (decoding and augmentation run in loader
workers during real training). Prints images/s, seconds per iteration and, on a GPU,
peak GPU memory.

\b
Examples:
  .venv/bin/python benchmarks/train_speed.py                    # CPU: batch 8, 3 timed iterations
  .venv/bin/python benchmarks/train_speed.py --device cuda --batch-size 64 --iterations 20
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinoret.trainer.config import make_config  # noqa: E402
from dinoret.core.devices import autocast, resolve_device  # noqa: E402
from dinoret.trainer.masking import collate, mask_generator_for  # noqa: E402
from dinoret.trainer.optim import apply_schedules, build_optimizer  # noqa: E402
from dinoret.trainer.ssl import SSLMetaArch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def random_batch(cfg: dict, seed: int) -> dict:
    c = cfg["crops"]
    g = torch.Generator().manual_seed(seed)
    samples = [
        {
            "global_crops": [torch.randn(3, c["global_crops_size"], c["global_crops_size"], generator=g) for _ in range(2)],
            "local_crops": [torch.randn(3, c["local_crops_size"], c["local_crops_size"], generator=g)
                            for _ in range(c["local_crops_number"])],
        }
        for _ in range(cfg["train"]["batch_size_per_gpu"])
    ]
    masker = mask_generator_for(c["global_crops_size"], cfg["student"]["patch_size"])
    return collate(samples, cfg["ibot"]["mask_ratio_min_max"], cfg["ibot"]["mask_sample_probability"], masker,
                   random.Random(seed))


def seconds_per_step(meta, cfg: dict, device: torch.device, warmup: int, iterations: int) -> float:
    """Mean wall time of a whole training step of ``meta`` (a meta-architecture of
    dinoret.trainer) on two alternating random batches, after ``warmup`` untimed steps."""
    gpu = device.type == "cuda"
    parts = meta.trainable_parts()
    opt = build_optimizer(parts, cfg)
    batches = [random_batch(cfg, s) for s in range(2)]
    if gpu:
        batches = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]

    def step(i: int) -> None:
        apply_schedules(opt, lr=1e-4, wd=0.04, last_layer_lr=1e-4)
        opt.zero_grad(set_to_none=True)
        meta.forward_backward(batches[i % 2], teacher_temp=0.07, autocast=autocast(device))
        for m in parts:
            torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["optim"]["clip_grad"])
        opt.step()
        meta.update_ema(0.994)

    for i in range(warmup):
        step(i)
    if gpu:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(iterations):
        step(i)
    if gpu:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / iterations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "vits14.yaml"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="per device [default: 64 on GPU, 8 on CPU]")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations [default: 20 GPU, 3 CPU]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first [default: 5 GPU, 1 CPU]")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch_size = args.batch_size or (64 if gpu else 8)
    iterations = args.iterations or (20 if gpu else 3)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    cfg = make_config([args.config], [f"train.batch_size_per_gpu={batch_size}"])
    torch.manual_seed(0)
    meta = SSLMetaArch(cfg).to(device).train()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = seconds_per_step(meta, cfg, device, warmup, iterations)
    result = {
        "model": "ViT-S/14 (configs/vits14.yaml)",
        "device": torch.cuda.get_device_name(device) if gpu else f"CPU {platform.machine()}, {args.threads} threads",
        "precision": "bf16 autocast" if gpu else "fp32",
        "batch_size": batch_size,
        "crops": f"2x{cfg['crops']['global_crops_size']} + {cfg['crops']['local_crops_number']}x{cfg['crops']['local_crops_size']}",
        "seconds_per_iteration": round(seconds, 4),
        "images_per_s": round(batch_size / seconds, 2),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if gpu else None,
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
