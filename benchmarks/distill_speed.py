"""Distillation step throughput: a frozen ViT-L/14 teacher into a ViT-S/14 student, on this device.

One iteration is the whole step ``dinoret distill`` runs: the teacher's forward on the two
224-px global crops (bf16 on a GPU, fp32 on a CPU, no gradients), the student's forward on
2 global + 8 local (98 px) crops, the losses, backward, gradient clipping, AdamW and the
student's EMA update. The methods timed: ``heads`` (a teacher with the default DINOv2
head: 65,536 prototypes, shared by DINO and iBOT; DINO + iBOT on every patch + KoLeo) and
``feature`` (cosine on class and patch tokens through projectors: an official checkpoint)
and ``hybrid`` (``feature`` plus the student's own DINO loss on class tokens, its
65,536-prototype head and its EMA's forward on the global crops).
Weights are random (speed does not depend on them); batches are made once beforehand.

\b
Examples:
  .venv/bin/python benchmarks/distill_speed.py                    # CPU: batch 4, 2 timed iterations per method
  .venv/bin/python benchmarks/distill_speed.py --device cuda --batch-size 64 --iterations 20
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_speed import seconds_per_step  # noqa: E402

from dinoret.core.devices import resolve_device  # noqa: E402
from dinoret.core.models import build_model  # noqa: E402
from dinoret.trainer.config import make_config  # noqa: E402
from dinoret.trainer.distill import DistillMetaArch, Teacher, make_distill_config  # noqa: E402
from dinoret.trainer.ssl import Student  # noqa: E402


def teacher(method: str) -> Teacher:
    """A random ViT-L/14 with the default DINOv2 head, or the bare backbone."""
    if method == "heads":
        cfg = make_config(overrides=["student.arch=vit_large"])
        module = Student.from_config(cfg)
        return Teacher(module.eval().requires_grad_(False), "random", "", "dinov2_vitl14", cfg, None)
    return Teacher(Student(build_model("dinov2_vitl14")).eval().requires_grad_(False), "random", "",
                   "dinov2_vitl14", None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="per device [default: 64 on GPU, 4 on CPU]")
    ap.add_argument("--iterations", type=int, default=None, help="timed iterations [default: 20 GPU, 2 CPU]")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations first [default: 5 GPU, 1 CPU]")
    ap.add_argument("--methods", nargs="+", default=["heads", "feature", "hybrid"],
                    choices=["heads", "feature", "hybrid"])
    ap.add_argument("--threads", type=int, default=2, help="CPU threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    batch_size = args.batch_size or (64 if gpu else 4)
    iterations = args.iterations or (20 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    results = []
    for method in args.methods:
        t = teacher(method)
        sets = [f"train.batch_size_per_gpu={batch_size}", f"distill.method={method}", f"train.device={device.type}"]
        cfg = make_distill_config([REPO / "configs" / "distill_vits14.yaml"], sets)
        torch.manual_seed(0)
        meta = DistillMetaArch(cfg, t).to(device).train()
        if gpu:
            torch.cuda.reset_peak_memory_stats(device)
        seconds = seconds_per_step(meta, cfg, device, warmup, iterations)
        results.append({
            "method": method,
            "teacher": "ViT-L/14" + (" + DINO/iBOT head (65,536 prototypes)" if method == "heads" else ""),
            "student": "ViT-S/14 (configs/distill_vits14.yaml)",
            "device": torch.cuda.get_device_name(device) if gpu else f"CPU {platform.machine()}, {args.threads} threads",
            "precision": "teacher bf16, student bf16 autocast" if gpu else "fp32",
            "batch_size": batch_size,
            "crops": f"2x{cfg['crops']['global_crops_size']} + {cfg['crops']['local_crops_number']}x{cfg['crops']['local_crops_size']}",
            "seconds_per_iteration": round(seconds, 3),
            "images_per_s": round(batch_size / seconds, 2),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if gpu else None,
        })
        del meta, t
    print(json.dumps({"torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
