"""`dinoret index` under torchrun on gloo: what sharing the embedding across ranks costs.

Three measurements, each through torchrun as a user runs it:

1. **The same photos, one process and two ranks.** N real photos of ../shared/data
   (oxford5k_gt_subset) indexed with a random ViT-S/14 by `python -m dinoret index`
   and by `torchrun --nproc_per_node=2 -m dinoret index` (one thread per rank, as torchrun
   sets it). Prints each run's wall time and images/s, and checks that the two indexes
   agree: same paths, vectors equal within float16 rounding, same top-10 neighbours.
2. **Where rank 0's time goes** in that 2-rank run: the run is repeated with every
   `gather_object` timed (this script is the torchrun entry point and wraps it); the time
   a rank spends in the gather is the cost of the lock step (waiting for the slower rank)
   plus the transfer, and the bytes are the pickled results.
3. **The gather alone**: two ranks send each other nothing but results shaped like a
   step's (file facts + float16 vectors), as fast as they can: the most images/s that
   path can carry to rank 0, for 384-d (ViT-S) and 1536-d (ViT-g) vectors.
4. **Rank 0's commits alone**: records with their float16 vectors committed as an index
   run commits them (chunk file, then one LMDB transaction, every 1,024 images): the
   most images/s one writer takes, whatever the number of ranks feeding it.

    python benchmarks/index_distributed.py              # 200 photos
    python benchmarks/index_distributed.py --n 100 --keep /tmp/ddp-bench
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DINORET_SHARED_DATA", REPO.parent / "shared" / "data"))


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def run(cmd: list[str], **env: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO), **env))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return wall, r.stdout


def images_per_s(out: str) -> float:
    m = re.search(r"\(([\d.]+) images/s embedding\)", out)
    return float(m.group(1)) if m else float("nan")


# --- inside torchrun -------------------------------------------------------------------

def worker_index(stats_dir: str, cli_args: list[str]) -> None:
    """One rank of `dinoret index` with every gather_object timed."""
    import torch.distributed as dist

    from dinoret.cli import main

    real = dist.gather_object
    stats = {"calls": 0, "gather_s": 0.0, "bytes": 0}

    def timed(obj, *a, **k):
        stats["bytes"] += len(pickle.dumps(obj))
        t0 = time.perf_counter()
        try:
            return real(obj, *a, **k)
        finally:
            stats["gather_s"] += time.perf_counter() - t0
            stats["calls"] += 1

    dist.gather_object = timed
    t0 = time.perf_counter()
    try:
        main(cli_args, standalone_mode=False)
    finally:
        stats["wall_s"] = time.perf_counter() - t0
        Path(stats_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(stats))


def worker_gather(dim: int, batch: int, seconds: float) -> None:
    """Ranks send step-shaped results to rank 0 for ``seconds``; rank 0 prints the rate."""
    import torch.distributed as dist

    from dinoret.indexer.file_dataset import FileItem

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    rng = np.random.default_rng(rank)
    items = [FileItem(f"/data/photos/d{i // 100:04d}/img{i:08d}.jpg", 123456, 1.7e9 + i, "%032x" % i, "%032x" % -~i,
                      640, 480) for i in range(batch)]
    vectors = rng.standard_normal((batch, dim)).astype(np.float16)
    payload = [(i * world + rank, item, vectors[i]) for i, item in enumerate(items)]
    size = len(pickle.dumps(payload))
    steps, t0 = 0, time.perf_counter()
    while True:
        out = [None] * world if rank == 0 else None
        dist.gather_object(payload, out, dst=0)
        steps += 1
        done = [time.perf_counter() - t0 > seconds]
        dist.broadcast_object_list(done, src=0)  # stop together
        if done[0]:
            break
    dt = time.perf_counter() - t0
    if rank == 0:
        per_s = steps * batch * world / dt
        print(json.dumps({"dim": dim, "batch": batch, "steps": steps, "images_per_s": per_s,
                          "ms_per_step": 1000 * dt / steps, "bytes_per_image": size / batch,
                          "MB_per_s": per_s * size / batch / 1e6}))
    dist.destroy_process_group()


# --- the parent ------------------------------------------------------------------------

def compare(one: Path, two: Path) -> str:
    from dinoret.retrieval.index import open_index

    a, b = open_index(one), open_index(two)
    ra = sorted(a.records(a.ids()), key=lambda r: r.path)
    rb = sorted(b.records(b.ids()), key=lambda r: r.path)
    assert [r.path for r in ra] == [r.path for r in rb], "different paths"
    va, vb = a.vectors([r.id for r in ra]), b.vectors([r.id for r in rb])
    diff = float(np.abs(va - vb).max())
    _, fa = a.search(va, k=10)
    _, fb = b.search(vb, k=10)
    pa = [[a.record(int(i)).path for i in row if i >= 0] for row in fa]
    pb = [[b.record(int(i)).path for i in row if i >= 0] for row in fb]
    same = sum(x == y for x, y in zip(pa, pb))
    return f"{len(ra)} images: same paths; max |vector difference| {diff:.2e}; same top-10 for {same}/{len(pa)} queries"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="photos to index (default 200)")
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    ap.add_argument("--gather-seconds", type=float, default=5.0)
    ap.add_argument("--worker-index", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    ap.add_argument("--worker-gather", nargs=3, type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_index:
        return worker_index(args.worker_index[0], args.worker_index[1:])
    if args.worker_gather:
        dim, batch, seconds = args.worker_gather
        return worker_gather(int(dim), int(batch), seconds)

    src = SHARED / "oxford5k_gt_subset"
    photos_all = sorted(p for p in src.rglob("*.jpg"))[: args.n]
    if len(photos_all) < args.n:
        sys.exit(f"need {args.n} photos under {src}")
    work = args.keep or Path(tempfile.mkdtemp(prefix="ddp-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    photos = work / "photos"
    photos.mkdir(parents=True)
    for p in photos_all:
        shutil.copy(p, photos / p.name)
    import torch

    from dinoret.core.models import build_model

    torch.manual_seed(0)
    weights = work / "dinov2_vits14_pretrain.pth"
    torch.save(build_model("dinov2_vits14").state_dict(), weights)
    print(f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{args.n} photos of {src.name}, random ViT-S/14, 224 px crop, batch 32, CPU")

    common = ["--weights", str(weights), "--device", "cpu", "-q"]
    wall1, out1 = run([sys.executable, "-m", "dinoret", "index", str(photos), "--index", str(work / "one"), *common])
    print(f"one process (2 threads, 1 decoding worker): wall {wall1:.1f} s, {images_per_s(out1):.1f} images/s embedding")
    wall2, out2 = run(torchrun("-m", "dinoret", "index", str(photos), "--index", str(work / "two"), *common))
    print(f"torchrun, 2 ranks (1 thread and 1 decoding worker each): wall {wall2:.1f} s, "
          f"{images_per_s(out2):.1f} images/s embedding")
    print("  " + compare(work / "one", work / "two"))

    stats = work / "stats"
    stats.mkdir()
    wall3, out3 = run(torchrun(__file__, "--worker-index", str(stats), "index", str(photos), "--index",
                               str(work / "three"), *common))
    print(f"the same 2-rank run with the gathers timed: {images_per_s(out3):.1f} images/s embedding")
    for f in sorted(stats.glob("rank*.json")):
        s = json.loads(f.read_text())
        print(f"  {f.stem}: {s['calls']} gathers, {s['gather_s']:.2f} s in them of {s['wall_s']:.1f} s "
              f"({100 * s['gather_s'] / s['wall_s']:.1f}%), {s['bytes'] / args.n * 2:.0f} bytes sent per image")

    print(f"the gather alone, 2 ranks, {args.gather_seconds:.0f} s each:")
    for dim, batch in ((384, 32), (384, 256), (1536, 256)):
        _, out = run(torchrun(__file__, "--worker-gather", str(dim), str(batch), str(args.gather_seconds)),
                     OMP_NUM_THREADS="1")
        r = json.loads(out.strip().splitlines()[-1])
        print(f"  {dim}-d, batch {batch}: {r['images_per_s']:,.0f} images/s to rank 0 ({r['ms_per_step']:.2f} ms "
              f"per step, {r['bytes_per_image']:.0f} bytes per image, {r['MB_per_s']:.0f} MB/s)")

    n_commit = 50_000
    rate, chunk_share, dim = commit_rate(work / "commit", n_commit)
    print(f"rank 0's commits alone: {rate:,.0f} images/s ({n_commit:,} records with {dim}-d float16 vectors, "
          f"a commit every 1,024); writing the chunk files {100 * chunk_share:.0f}% of that time, "
          f"the LMDB transactions the rest")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


def commit_rate(index_dir: Path, n: int, dim: int = 384) -> tuple[float, float, int]:
    """Images/s through the index run's Committer (chunk file + LMDB transaction per 1,024),
    and the share of that time spent writing chunk files."""
    from dinoret.indexer import commit
    from dinoret.indexer.layout import IndexPaths
    from dinoret.indexer.meta import Record

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim)).astype(np.float16)
    items = [(Record(-1, f"/data/photos/d{i // 100:04d}/img{i:08d}.jpg", 123456, 1.7e9 + i, "%032x" % i,
                     "%032x" % -~i, 640, 480, -1), vectors[i]) for i in range(n)]
    real, chunk_s = commit.write_chunk, [0.0]

    def timed(*a, **k):
        t = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            chunk_s[0] += time.perf_counter() - t

    commit.write_chunk = timed
    t0 = time.perf_counter()
    try:
        done = commit.commit_vectors(IndexPaths.of(index_dir), items, shard_size=1_000_000, commit_every=1024)
    finally:
        commit.write_chunk = real
    total = time.perf_counter() - t0
    assert done == n
    return n / total, chunk_s[0] / total, dim


if __name__ == "__main__":
    main()
