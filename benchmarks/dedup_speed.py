"""`dinoret dedup` speed and memory on a synthetic index with planted near-duplicate pairs.

An index is written as ``dinoret index`` leaves it (records in LMDB, float16 ``vectors/``
chunks, no shards: dedup reads none) through the indexer's own commit code; then the
real command, ``python -m dinoret dedup --index DIR -q``, runs in a fresh process. Printed:
its wall time and CPU time (user + system: on a machine shared with other jobs the wall
time says more about them), its peak resident memory (max RSS of that process alone,
imports included) against the float16 vectors' own bytes, the load average around the
run, and from the report it stored: the recall of the planted pairs and the groups that
hold an image outside them.

Vectors: ``clusters`` random unit centres, members spread around them (cosine between two
members of a cluster about 0.5, far below any dedup threshold, so clusters are realistic
"same topic" neighbourhoods, not duplicates), plus ``pairs`` planted copies whose cosine
to their original is spread uniformly over [threshold + 0.02, 0.99].

\b
Examples:
  .venv/bin/python benchmarks/dedup_speed.py --sizes 100000 1000000
  .venv/bin/python benchmarks/dedup_speed.py --sizes 1000000 --keep /var/tmp/dd   # keep the index ...
  .venv/bin/python benchmarks/dedup_speed.py --reuse /var/tmp/dd/dedup_speed_1000000_xxx   # ... and time it again
  .venv/bin/python benchmarks/dedup_speed.py --switch          # exact vs the IVF engines on a CPU by N
  .venv/bin/python benchmarks/dedup_speed.py --sizes 1000000 --device cuda --method exact
  .venv/bin/python benchmarks/dedup_speed.py --sizes 100000 --method ivfpq   # another engine, for comparison
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BLOCK = 100_000  # vectors generated and committed at once

# Runs the command as a child of a small process: a child forked straight from this (large)
# process would count this process's pages in its own peak RSS until it execs.
_MEASURE = (
    "import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}), file=sys.stderr); "
    "sys.exit(r.returncode)"
)


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


def image_path(i: int) -> str:
    return f"/data/photos/{i // 1000:04d}/IMG_{i:07d}.jpg"


def build_index(root: Path, n: int, threshold: float) -> np.ndarray:
    """The synthetic vectors as an index keeps them; returns the planted (original, copy) ids."""
    from dinoret.indexer.catalog import open_catalog
    from dinoret.indexer.commit import commit_vectors, create_info
    from dinoret.indexer.layout import IndexPaths
    from dinoret.indexer.meta import Record

    x, planted = synthetic(n, threshold=threshold)
    paths = IndexPaths.of(root)
    paths.root.mkdir(parents=True)
    engine = open_catalog(paths.catalog, create=True)
    identity = {"model": "synthetic", "weights_sha256": "none", "dim": x.shape[1], "backbone_config": {}, "preprocess": {}}
    create_info(engine, identity, "", 10_000_000)
    engine.dispose()
    rng = np.random.default_rng(1)
    sides = rng.integers(200, 4000, (n, 2))
    sizes = rng.integers(20_000, 5_000_000, n)

    def items():
        for i in range(n):
            rec = Record(-1, image_path(i), int(sizes[i]), 1.7e9 + i, f"{i:032x}", f"{n + i:032x}",
                         int(sides[i, 0]), int(sides[i, 1]), -1)
            yield rec, x[i]

    commit_vectors(paths, items(), 10_000_000, commit_every=BLOCK)
    return planted


def measure(index: Path, planted: np.ndarray, args) -> dict:
    """Run ``dinoret dedup`` on ``index`` in a fresh process; its time, memory and recall."""
    from dinoret.indexer.catalog import open_catalog
    from dinoret.indexer.layout import IndexPaths
    from dinoret.retrieval.reports import list_reports, load_report

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, "-m", "dinoret", "dedup", "--index", str(index), "--threshold", str(args.threshold),
           "-k", str(args.k), "--method", args.method, "--device", args.device, "-q"]
    load_before = os.getloadavg()
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    load_after = os.getloadavg()
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    usage = json.loads(res.stderr.strip().splitlines()[-1])
    engine = open_catalog(IndexPaths.of(index).catalog)
    report = load_report(engine, list_reports(engine)[0]["id"])
    engine.dispose()
    row_of = {image_path(i): i for i in np.unique(planted).tolist()}
    group_of = {}
    stray = 0
    for g in report["groups"]:
        rows = [row_of.get(m["path"]) for m in g["members"]]
        stray += any(r is None for r in rows)
        for r in rows:
            group_of[r] = g["group"]
    found = sum(1 for a, b in planted.tolist() if a in group_of and group_of[a] == group_of.get(b))
    vec_bytes = sum(f.stat().st_size - 128 for f in (index / "vectors").glob("vec-*.npy"))  # minus .npy headers
    peak = usage["maxrss_kb"] * 1024
    return {
        "n": report["stats"]["images"], "method": report["params"]["method"], "nprobe": report["params"]["nprobe"],
        "device": args.device, "k": args.k, "threshold": args.threshold, "threads": args.threads,
        "wall_s": round(wall, 1), "cpu_s": round(usage["cpu_s"], 1), "read_s": report["stats"].get("read_seconds"),
        "peak_rss_gib": round(peak / 2**30, 3), "float16_gib": round(vec_bytes / 2**30, 3),
        "peak_over_float16": round(peak / vec_bytes, 2), "planted_pairs": len(planted),
        "pair_recall": round(found / len(planted), 4), "groups": len(report["groups"]),
        "groups_with_unplanted_rows": stray, "load_avg_before": [round(v, 2) for v in load_before],
        "load_avg_after": [round(v, 2) for v in load_after],
    }


def switch_point(sizes: list[int], k: int = 10) -> None:
    """Time the CPU engines' kNN edges for growing N (sets EXACT_MAX_CPU_PAIRS)."""
    from dinoret.retrieval.knn_graph import knn_edges

    for n in sizes:
        x, _ = synthetic(n, pairs=min(1000, n // 10))
        row = {"n": n}
        for method in ("exact", "ivf", "ivfpq", "faiss"):
            t0 = time.perf_counter()
            knn_edges(x, k=k, threshold=0.9, method=method, device="cpu")
            row[method + "_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--method", default="auto", choices=["auto", "exact", "ivf", "ivfpq", "faiss"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threshold", type=float, default=None, help="default: dinoret.retrieval.dedup.DEFAULT_THRESHOLD")
    p.add_argument("--threads", type=int, default=2, help="BLAS and OpenMP threads of the command")
    p.add_argument("--switch", action="store_true", help="time exact vs the IVF engines on the CPU by N")
    p.add_argument("--workdir", default=None, help="where the indexes go (default: system temp)")
    p.add_argument("--keep", action="store_true", help="keep the indexes (to time them again with --reuse)")
    p.add_argument("--reuse", default=None, help="time again a folder kept by --keep (no rebuild)")
    args = p.parse_args()
    if args.threshold is None:
        from dinoret.retrieval.dedup import DEFAULT_THRESHOLD

        args.threshold = DEFAULT_THRESHOLD
    if args.switch:
        switch_point([5_000, 10_000, 20_000, 40_000, 80_000] if args.sizes == p.get_default("sizes") else args.sizes)
        return
    print(f"# {platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus, "
          f"{args.threads} threads", flush=True)
    if args.reuse:
        work = Path(args.reuse)
        print(json.dumps(measure(work / "idx", np.load(work / "planted.npy"), args)), flush=True)
        return
    for n in args.sizes:
        work = Path(tempfile.mkdtemp(prefix=f"dedup_speed_{n}_", dir=args.workdir))
        try:
            t = time.perf_counter()
            planted = build_index(work / "idx", n, args.threshold)
            np.save(work / "planted.npy", planted)
            print(f"# n={n:,}: index built in {time.perf_counter() - t:.0f} s ({work})", flush=True)
            print(json.dumps(measure(work / "idx", planted, args)), flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
