"""End-to-end ``dinoret index`` throughput against the bare model forward, in one run.

Writes ``--images`` JPEGs (640x480, distinct content), then measures on the chosen device:

* model only: ``Embedder.embed_batch`` on preprocessed batches already in memory (bf16
  autocast on CUDA, fp32 on a CPU): the ceiling;
* end to end: ``build_index`` on the folder (file walk, reads, hashing, decode, resize, the
  model, commits, the shard sync): on CUDA with the GPU input path
  (``dinoret.indexer.gpu_pipeline``: nvjpeg decode, resize on the GPU, prefetched reads).

Random weights: speed does not depend on them.

    python benchmarks/index_speed.py --device cuda --images 50000 --batch-size 512
    python benchmarks/index_speed.py --device cpu --images 256 --batch-size 32
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.embed_speed import throughput  # noqa: E402
from dinoret.core.devices import resolve_device  # noqa: E402
from dinoret.core.models import build_model  # noqa: E402
from dinoret.core.weights import save_backbone  # noqa: E402
from dinoret.indexer.build import BuildOptions, build_index  # noqa: E402
from dinoret.indexer.embed import Embedder  # noqa: E402


def write_jpegs(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(n):
        small = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
        img.save(folder / f"{i:07d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 32 on a CPU")
    ap.add_argument("--workers", type=int, default=None, help="CPU decoding processes (CPU path)")
    ap.add_argument("--model", default="dinov2_vits14")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=20.0, help="measuring time of the model-only forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = args.batch_size or (512 if device.type == "cuda" else 32)
    tmp = Path(tempfile.mkdtemp(prefix="index_speed_"))
    try:
        write_jpegs(tmp / "photos", args.images)
        weights = tmp / "weights.pth"
        torch.manual_seed(0)
        save_backbone(weights, build_model(args.model), name=args.model)
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} threads"
        print(f"{args.model}, {args.images} JPEGs 640x480, batch {batch}, {where}", flush=True)
        emb = Embedder.load(args.model, str(weights), device=device)
        forward = throughput(emb, batch, args.seconds)
        print(f"model only:  {forward:10.1f} images/s", flush=True)
        opts = BuildOptions(model=args.model, weights=str(weights), device=str(device), batch_size=batch,
                            workers=args.workers, progress=False)
        t = time.perf_counter()
        summary = build_index([tmp / "photos"], tmp / "idx", opts)
        wall = time.perf_counter() - t
        print(f"end to end:  {summary.indexed / wall:10.1f} images/s ({summary.indexed} indexed in {wall:.1f} s; "
              f"embedding loop {summary.indexed / summary.embed_s:.1f} images/s)")
        print(f"end to end / model only: {summary.indexed / wall / forward:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
