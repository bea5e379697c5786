"""Embedding throughput (images/s) of ViT-S/14 and ViT-B/14 at 224 px on the current device.

Measures the model forward pass on preprocessed batches (what `dinoret index` spends
its compute on), with random weights: speed does not depend on the weights.
CPU runs use fp32 (bf16 is slower on CPUs without AMX); CUDA runs use bf16 autocast.

    python benchmarks/embed_speed.py                 # CPU, 2 threads
    python benchmarks/embed_speed.py --device cuda
"""
from __future__ import annotations

import argparse
import platform
import time

import torch

from dinoret.indexer.embed import Embedder
from dinoret.core.devices import resolve_device
from dinoret.core.models import build_model
from dinoret.core.weights import Backbone


def images_per_second(name: str, device: torch.device, batch: int, seconds: float) -> float:
    model = build_model(name)
    return throughput(Embedder(Backbone(model, name, model.cfg, "random", "random"), device=device), batch, seconds)


def throughput(emb: Embedder, batch: int, seconds: float) -> float:
    """Images/s of ``emb.embed_batch`` on one 224-px batch held in memory (the model-only ceiling)."""
    device = emb.device
    x = torch.randn(batch, 3, 224, 224)
    emb.embed_batch(x)  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        emb.embed_batch(x)  # returns numpy: includes the device sync
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (the CI machine has 2 cores)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time per model")
    ap.add_argument("--models", nargs="+", default=["dinov2_vits14", "dinov2_vitb14"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {args.threads} threads"
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch}; 224x224")
    for name in args.models:
        print(f"{name:16s} {images_per_second(name, device, args.batch, args.seconds):8.1f} images/s")


if __name__ == "__main__":
    main()
