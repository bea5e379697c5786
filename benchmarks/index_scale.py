"""Index build time, disk, RAM, single-query latency and recall@10 at 100k and 1M vectors.

    python benchmarks/index_scale.py --sizes 100000 1000000 --threads 2
    nice python benchmarks/index_scale.py --sizes 10000000 --workdir /var/tmp/scale --keep --nprobes 64 128
    python benchmarks/index_scale.py --reuse /var/tmp/scale/index_scale_10000000_xxx/idx --nprobes 32 64
    python benchmarks/index_scale.py --reuse /var/tmp/scale/index_scale_10000000_xxx/idx --nprobes 512 --candidates 300 600
    python benchmarks/index_scale.py --reuse /var/tmp/scale/index_scale_10000000_xxx/idx --resync

``--nprobes`` measures the re-ranked search again at other probe counts (the index's own
is always measured), each with ``--candidates`` PQ candidates re-ranked (default: the
index's own count); ``--reuse`` measures the queries of an index kept by ``--keep``, and
``--resync`` first brings its shards up to date as ``dinoret index`` would (a rebuild from
the stored vectors when the index layout changed), timed.

The vectors are synthetic, 384-d (ViT-S/14 size), L2-normalised, drawn from a mixture of
Gaussians on the sphere (clusters of varied width around random centres), not uniform
noise: uniformly random high-dimensional vectors have no near neighbours at all (every
pair is at cosine ~0), which makes every approximate index look terrible and resembles
no real embedding set. Queries are fresh draws from the same mixture.

Everything goes through the indexer's own code: records and float16 chunks are committed
with ``dinoret.indexer.commit.commit_vectors``, the index type is chosen by ``dinoret.indexer.index_type`` and
the shards are trained and written by ``dinoret.indexer.sync.sync_shards``; search is
``dinoret.retrieval.index.IndexReader.search``. Ground truth is exact inner product over the
stored vectors for a subset of queries. RAM is the resident-memory growth of a fresh process
when the reader loads the shards (the raw vectors stay on disk, memory-mapped, and are
read only for re-ranking).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402

from dinoret.indexer.catalog import open_catalog  # noqa: E402
from dinoret.indexer.commit import commit_vectors, create_info  # noqa: E402
from dinoret.indexer.layout import IndexPaths, disk_usage  # noqa: E402
from dinoret.indexer.meta import MetaStore, Record  # noqa: E402
from dinoret.indexer.sync import sync_shards  # noqa: E402
from dinoret.retrieval.index import open_index  # noqa: E402

BLOCK = 100_000


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident memory now (``VmRSS``) or at its peak (``VmHWM``: unlike ru_maxrss, not
    inherited from the parent across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def shard_ram(index_dir: Path) -> tuple[int, int, int]:
    """(resident memory a fresh process gains by loading the shards, its RSS after, its peak RSS);
    a fresh process, because memory freed by the build would be reused and hide the growth."""
    code = (
        "import sys, resource; sys.path.insert(0, sys.argv[2]); from benchmarks.index_scale import rss_bytes; "
        "from dinoret.retrieval.index import open_index; r = open_index(sys.argv[1]); "
        "b = rss_bytes(); r.load(); a = rss_bytes(); "
        "print(a - b, a, rss_bytes('VmHWM'))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(index_dir), str(REPO)], check=True,
                         capture_output=True, text=True)
    grow, after, peak = map(int, out.stdout.strip().splitlines()[-1].split())
    return grow, after, peak


class Mixture:
    """Clusters of varied width around random centres on the unit sphere."""

    def __init__(self, dim: int, n_clusters: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((n_clusters, dim)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.widths = rng.uniform(0.5, 1.2, n_clusters).astype(np.float32)
        self.dim = dim

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        k = rng.integers(0, len(self.centres), n)
        noise = rng.standard_normal((n, self.dim)).astype(np.float32) / np.sqrt(self.dim)
        x = self.centres[k] + self.widths[k, None] * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def ingest(paths: IndexPaths, mix: Mixture, n: int, shard_size: int, seed: int = 1) -> float:
    engine = open_catalog(paths.catalog, create=True)
    identity = {"model": "synthetic", "weights_sha256": "none", "dim": mix.dim, "backbone_config": {}, "preprocess": {}}
    create_info(engine, identity, "", shard_size)
    engine.dispose()
    rng = np.random.default_rng(seed)

    def items():
        for start in range(0, n, BLOCK):
            for j, v in enumerate(mix.sample(min(BLOCK, n - start), rng)):
                i = start + j
                yield Record(-1, f"/synthetic/{i}.jpg", 0, 0.0, f"{i:032x}", None, 0, 0, -1), v

    t = time.perf_counter()
    commit_vectors(paths, items(), shard_size, commit_every=BLOCK)
    return time.perf_counter() - t


def exact_topk(reader, queries: np.ndarray, k: int) -> np.ndarray:
    ids = reader.ids()
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_i = np.full((len(queries), k), -1, np.int64)
    for s in range(0, len(ids), BLOCK):
        block = ids[s : s + BLOCK]
        sc = queries @ reader.vectors(block).T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]  # the block's own top k, unordered
        all_s = np.hstack([best_s, np.take_along_axis(sc, part, 1)])
        all_i = np.hstack([best_i, block[part]])
        top = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def timed_queries(reader, queries: np.ndarray, truth: np.ndarray, rerank: bool) -> tuple[float, float, float]:
    """(p50 ms, p99 ms, recall@10) of single-query searches."""
    reader.search(queries[:5], k=10, rerank=rerank)  # warm up page cache and lookup tables
    lat, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = reader.search(q[None], k=10, rerank=rerank)
        lat.append(time.perf_counter() - t)
        found.append(ids[0])
    return (1000 * float(np.percentile(lat, 50)), 1000 * float(np.percentile(lat, 99)),
            recall_at(np.array(found[: len(truth)]), truth))


def measure(paths: IndexPaths, mix: Mixture, out: dict, args) -> dict:
    log("loading the shards in a fresh process")
    out["index_ram_bytes"], out["reader_rss_bytes"], out["reader_peak_rss_bytes"] = shard_ram(paths.root)
    reader = open_index(paths.root)
    spec = reader._shards()[0]
    out.update(factory=spec["factory"], nprobe=spec.get("nprobe"), shards=len(reader.shard_sizes()),
               disk_bytes=disk_usage(paths.root), shard_bytes=disk_usage(paths.shards),
               vector_bytes=disk_usage(paths.vectors))
    queries = mix.sample(args.queries, np.random.default_rng(99))
    log("exact ground truth")
    truth = exact_topk(reader, queries[: args.gt_queries], 10)
    for rerank in (True, False):
        tag = "rerank" if rerank else "norerank"
        log(f"timing {tag}")
        out[f"p50_ms_{tag}"], out[f"p99_ms_{tag}"], out[f"recall10_{tag}"] = timed_queries(reader, queries, truth, rerank)
    if spec["type"] == "ivfpq":
        from dinoret.indexer.coarse import search_quantizer_nprobe
        from dinoret.indexer.shards import set_search_params

        own_candidates = spec.get("rerank_candidates", 0)
        for nprobe in args.nprobes:
            other = dict(spec, nprobe=nprobe)
            if "quantizer_nprobe" in spec:
                other["quantizer_nprobe"] = search_quantizer_nprobe(spec["nlist"], nprobe)
            for index in reader._shards()[1]:
                set_search_params(index, other)
            for candidates in args.candidates or [own_candidates]:
                spec["rerank_candidates"] = candidates  # the reader's own spec: read at every search
                out.setdefault("sweep", []).append((nprobe, candidates, *timed_queries(reader, queries, truth, True)))
                log(f"nprobe {nprobe}, {candidates} candidates: p50 {out['sweep'][-1][2]:.2f} ms "
                    f"p99 {out['sweep'][-1][3]:.2f} ms recall@10 {out['sweep'][-1][4]:.3f}")
        spec["rerank_candidates"] = own_candidates
    return out


def resync(paths: IndexPaths, args) -> float:
    engine = open_catalog(paths.catalog)
    meta = MetaStore(paths.meta, readonly=False)
    log("syncing the shards")
    t = time.perf_counter()
    sync_shards(paths, engine, meta, args.dim, forced=args.index_type, show_progress=True)
    seconds = time.perf_counter() - t
    meta.close()
    engine.dispose()
    log(f"train/add {seconds:.1f} s")
    return seconds


def run(n: int, args) -> dict:
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"index_scale_{n}_", dir=args.workdir))
    paths = IndexPaths.of(workdir / "idx")
    paths.root.mkdir(parents=True)
    mix = Mixture(args.dim, n_clusters=max(10, n // 200))
    try:
        log(f"ingest {n:,} vectors into {paths.root}")
        ingest_s = ingest(paths, mix, n, args.shard_size)
        log(f"ingest {ingest_s:.1f} s; training and filling the shards")
        engine = open_catalog(paths.catalog)
        meta = MetaStore(paths.meta, readonly=False)
        t = time.perf_counter()
        sync_shards(paths, engine, meta, args.dim, forced=args.index_type)
        sync_s = time.perf_counter() - t
        meta.close()
        engine.dispose()
        log(f"train/add {sync_s:.1f} s")
        out = {"n": n, "ingest_s": ingest_s, "train_add_s": sync_s,
               "build_peak_rss_bytes": rss_bytes("VmHWM")}
        return measure(paths, mix, out, args)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=300, help="single queries timed")
    ap.add_argument("--gt-queries", type=int, default=300, help="queries with exact ground truth")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index-type", default="auto", choices=["auto", "flat", "ivfpq"])
    ap.add_argument("--shard-size", type=int, default=1_000_000)
    ap.add_argument("--workdir", default=None, help="where the temporary indexes go (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the built indexes")
    ap.add_argument("--nprobes", type=int, nargs="*", default=[], help="also measure re-ranked search at these nprobe")
    ap.add_argument("--candidates", type=int, nargs="*", default=[],
                    help="with --nprobes: re-rank this many PQ candidates (default: the index's own)")
    ap.add_argument("--reuse", default=None, help="measure the queries of an index kept by --keep (no build)")
    ap.add_argument("--resync", action="store_true", help="with --reuse: sync (rebuild) the shards first, timed")
    ap.add_argument("--clusters", type=int, default=None,
                    help="with --reuse: mixture clusters the index was made with (default: its size / 200)")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if args.reuse:
        paths = IndexPaths.of(args.reuse)
        n = len(open_index(paths.root))
        mix = Mixture(args.dim, n_clusters=args.clusters or max(10, n // 200))
        out = {"n": n}
        if args.resync:
            out["train_add_s"] = resync(paths, args)
        results = [measure(paths, mix, out, args)]
    else:
        results = (run(n, args) for n in args.sizes)
    for r in results:
        print(f"N={r['n']:,}  {r['factory']} nprobe={r['nprobe']} shards={r['shards']}")
        if "ingest_s" not in r and "train_add_s" in r:
            print(f"  resync (train/add): {r['train_add_s']:.1f} s")
        if "ingest_s" in r:
            print(f"  build: ingest {r['ingest_s']:.1f} s + train/add {r['train_add_s']:.1f} s; "
                  f"peak RSS {r['build_peak_rss_bytes'] / 2**30:.2f} GiB")
        print(f"  disk: {r['disk_bytes'] / 2**20:.1f} MiB (shards {r['shard_bytes'] / 2**20:.1f} MiB, "
              f"vectors {r['vector_bytes'] / 2**20:.1f} MiB)")
        print(f"  index RAM: {r['index_ram_bytes'] / 2**20:.1f} MiB = {r['index_ram_bytes'] / r['n']:.1f} bytes/vector "
              f"(reader process RSS after loading {r['reader_rss_bytes'] / 2**20:.0f} MiB, "
              f"peak {r['reader_peak_rss_bytes'] / 2**20:.0f} MiB)")
        for tag in ("rerank", "norerank"):
            print(f"  {tag:9s} latency p50 {r[f'p50_ms_{tag}']:.2f} ms  p99 {r[f'p99_ms_{tag}']:.2f} ms  "
                  f"recall@10 {r[f'recall10_{tag}']:.3f}")
        for nprobe, candidates, p50, p99, rec in r.get("sweep", []):
            print(f"  rerank, nprobe {nprobe}, {candidates} candidates: p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
                  f"recall@10 {rec:.3f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
