"""Dedup speed and memory on synthetic DINOv2-sized vectors with planted near-duplicate pairs.

The vectors are written as an index stores them (float16 chunks in a ``vectors/`` folder);
a fresh process per size then reads them as ``dinoret dedup`` does
(``VectorStore.get_float16``: float16, no float32 copy) and runs the same grouping
(``dinoret.retrieval.groups.find_groups``: kNN edges, union-find, star split). It prints the
wall time (read + grouping), peak RAM of that process (VmHWM: imports included) against the
float16 vectors' own bytes, and the recall of the planted pairs.

Vectors: ``clusters`` random unit centres, members spread around them (cosine between two
members of a cluster about 0.5, far below any dedup threshold, so clusters are realistic
"same topic" neighbourhoods, not duplicates), plus ``pairs`` planted copies whose cosine
to their original is spread uniformly over [threshold + 0.02, 0.99].

\b
Examples:
  .venv/bin/python benchmarks/dedup_speed.py --sizes 100000 1000000
  .venv/bin/python benchmarks/dedup_speed.py --switch          # exact vs Faiss on CPU by N
  .venv/bin/python benchmarks/dedup_speed.py --sizes 1000000 --device cuda --method exact
  .venv/bin/python benchmarks/dedup_speed.py --sizes 100000 --method faiss   # the IVF-Flat engine, for comparison
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def synthetic(n: int, d: int = 384, clusters: int = 1000, pairs: int = 1000, threshold: float = 0.9,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors (the last ``pairs`` are planted copies) and the planted (original, copy) rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    base = n - pairs
    x = np.empty((n, d), np.float32)
    step = 100_000  # generate in slices to keep the benchmark's own memory small
    for s in range(0, base, step):
        e = min(base, s + step)
        noise = rng.standard_normal((e - s, d)).astype(np.float32) / np.sqrt(d)
        x[s:e] = centres[rng.integers(0, clusters, e - s)] + noise
        x[s:e] /= np.linalg.norm(x[s:e], axis=1, keepdims=True)
    originals = rng.choice(base, pairs, replace=False)
    target = rng.uniform(threshold + 0.02, 0.99, pairs).astype(np.float32)
    # copy = cos * v + sin * u with u a random unit vector orthogonal to v: cosine exactly `target`
    v = x[originals]
    u = rng.standard_normal((pairs, d)).astype(np.float32)
    u -= (u * v).sum(1, keepdims=True) * v
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    x[base:] = target[:, None] * v + np.sqrt(1 - target[:, None] ** 2) * u
    x[base:] /= np.linalg.norm(x[base:], axis=1, keepdims=True)
    return x, np.stack([originals, np.arange(base, n)], axis=1)


def peak_rss() -> int:
    """Peak resident bytes of this process (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def write_store(workdir: Path, n: int, threshold: float) -> None:
    """The synthetic vectors as an index keeps them: float16 chunks under ``workdir/vectors``."""
    from dinoret.indexer.vectors import write_chunk

    x, planted = synthetic(n, threshold=threshold)
    for s in range(0, n, 100_000):
        write_chunk(workdir / "vectors", s, x[s : s + 100_000])
    np.save(workdir / "planted.npy", planted)


def run_one(workdir: Path, method: str, device: str, k: int, threshold: float, nprobe: int, threads: int) -> dict:
    import torch

    from dinoret.indexer.vectors import VectorStore
    from dinoret.retrieval.groups import find_groups

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    planted = np.load(workdir / "planted.npy")
    rss_imports = peak_rss()
    t0 = time.perf_counter()
    store = VectorStore(workdir / "vectors")
    n = sum(len(chunk) for _, chunk in store.iter_chunks())
    x = store.get_float16(np.arange(n))
    read_s = time.perf_counter() - t0
    groups = find_groups(x, threshold=threshold, k=k, method=method, device=device, nprobe=nprobe, progress=True)
    seconds = time.perf_counter() - t0
    group_of = {}
    for gi, g in enumerate(groups):
        for r in g.rows.tolist():
            group_of[r] = gi
    found = sum(1 for a, b in planted.tolist() if a in group_of and group_of.get(a) == group_of.get(b))
    planted_rows = set(planted.ravel().tolist())
    stray = sum(1 for g in groups if not set(g.rows.tolist()) <= planted_rows)
    out = {
        "n": n, "dim": x.shape[1], "method": method, "device": device, "k": k, "threshold": threshold,
        "nprobe": nprobe, "threads": threads, "seconds": round(seconds, 2), "read_s": round(read_s, 2),
        "peak_rss_gib": round(peak_rss() / 2**30, 3), "imports_rss_gib": round(rss_imports / 2**30, 3),
        "float16_gib": round(x.nbytes / 2**30, 3), "peak_over_float16": round(peak_rss() / x.nbytes, 2),
        "planted_pairs": len(planted), "pair_recall": round(found / len(planted), 4),
        "groups": len(groups), "groups_with_unplanted_rows": stray,
    }
    if device != "cpu" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def switch_point(sizes: list[int], threads: int, k: int = 10) -> None:
    """Time exact vs Faiss kNN edges on the CPU for growing N (sets EXACT_MAX_CPU_PAIRS)."""
    import torch

    import faiss
    from dinoret.retrieval.knn_graph import knn_edges

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    for n in sizes:
        x, _ = synthetic(n, pairs=min(1000, n // 10))
        row = {"n": n}
        for method in ("exact", "ivfpq", "faiss"):
            t0 = time.perf_counter()
            knn_edges(x, k=k, threshold=0.9, method=method, device="cpu")
            row[method + "_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--method", default="auto", choices=["auto", "exact", "ivfpq", "faiss"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="default: dinoret.retrieval.dedup.DEFAULT_THRESHOLD")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--switch", action="store_true", help="time exact vs Faiss kNN on the CPU by N")
    p.add_argument("--workdir", default=None, help="where the float16 chunks go (default: system temp)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process: one stored set
    args = p.parse_args()
    if args.threshold is None:
        from dinoret.retrieval.dedup import DEFAULT_THRESHOLD

        args.threshold = DEFAULT_THRESHOLD
    if args.switch:
        switch_point([5_000, 10_000, 20_000, 40_000, 80_000] if args.sizes == p.get_default("sizes") else args.sizes,
                     args.threads)
        return
    if args.one:
        print(json.dumps(run_one(Path(args.one), args.method, args.device, args.k, args.threshold, args.nprobe,
                                 args.threads)))
        return
    print(f"# {platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus, "
          f"{args.threads} threads", flush=True)
    for n in args.sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"dedup_speed_{n}_", dir=args.workdir))
        try:
            write_store(workdir, n, args.threshold)
            # A fresh process per size, so that the peak RSS is this size's alone.
            cmd = [sys.executable, __file__, "--one", str(workdir), "--method", args.method, "--device",
                   args.device, "--k", str(args.k), "--threshold", str(args.threshold), "--nprobe", str(args.nprobe),
                   "--threads", str(args.threads)]
            res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            print(res.stdout.strip().splitlines()[-1], flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
