"""How balanced is a curated sample? Random vs flat k-means vs hierarchical k-means sampling
on synthetic long-tailed data with known components.

Data: ``--components`` Gaussian components in 384-d (random unit centres; each point is its
centre plus isotropic noise, with a width drawn per component), component sizes Zipf
distributed (size of the r-th component proportional to 1/r^``--zipf``, every component at
least one point). The vectors go into a real index (float16 ``vectors/``, as `dinoret index`
writes them) and are clustered by the code `dinoret curate clusters` runs; selections come
from the code `dinoret curate sample` runs.

Each method selects ``--fraction`` of the pool:

* random: a uniform sample;
* flat k-means: k-means with the leaf count of the hierarchy, then balanced sampling over
  its clusters (one level);
* hierarchical: ``--levels`` with ``--resample`` steps, balanced sampling top down;
* (ablation) flat k-means with the hierarchy's level-1 resampling steps, i.e. the
  hierarchy's own leaves sampled as one level: what the resampling does without the levels
  above (on this data, whose components have no structure above them, the levels above
  can only group unrelated leaves).

Reported per method: components covered (distinct components with at least one selected
point, of those in the pool) and KL divergence from uniform of the selected points'
component histogram (log C - entropy, C = components; 0 is perfectly flat).

\b
Examples:
  .venv/bin/python benchmarks/curate_balance.py --sizes 100000
  .venv/bin/python benchmarks/curate_balance.py --sizes 100000 1000000 --levels 10000,1000,100 --resample 10
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dinoret.indexer.catalog import open_catalog  # noqa: E402
from dinoret.indexer.commit import commit_vectors, create_info  # noqa: E402
from dinoret.indexer.layout import IndexPaths  # noqa: E402
from dinoret.indexer.meta import Record  # noqa: E402
from dinoret.retrieval.hierarchy import Hierarchy, build_hierarchy, parse_levels, per_level  # noqa: E402
from dinoret.retrieval.index import open_index  # noqa: E402
from dinoret.retrieval.kmeans import KMeansParams  # noqa: E402
from dinoret.retrieval.sampling import balanced_sample  # noqa: E402
from dinoret.retrieval.vector_rows import StoreRows  # noqa: E402

BLOCK = 100_000


def zipf_sizes(n: int, components: int, a: float) -> np.ndarray:
    """Sizes proportional to 1/rank^a, each at least 1, summing to n (largest remainders)."""
    w = 1.0 / np.arange(1, components + 1) ** a
    ideal = (n - components) * w / w.sum()
    sizes = 1 + np.floor(ideal).astype(np.int64)
    left = n - sizes.sum()
    sizes[np.argsort(-(ideal - np.floor(ideal)), kind="stable")[:left]] += 1
    return sizes


class LongTail:
    def __init__(self, n: int, components: int, dim: int, zipf: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        c = rng.standard_normal((components, dim)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        # Noise norm 0.6-1.2 of the centre's: cosine to the centre ~0.64-0.86, between two
        # members of a component ~0.4-0.7, between components ~0 (+-0.05).
        self.widths = rng.uniform(0.6, 1.2, components).astype(np.float32)
        self.sizes = zipf_sizes(n, components, zipf)
        self.labels = rng.permutation(np.repeat(np.arange(components), self.sizes))  # component of each point
        self.dim, self.seed = dim, seed

    def vectors(self, start: int, stop: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        lab = self.labels[start:stop]
        noise = rng.standard_normal((len(lab), self.dim)).astype(np.float32) / np.sqrt(self.dim)
        x = self.centres[lab] + self.widths[lab, None] * noise
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_index(root: Path, data: LongTail) -> Path:
    paths = IndexPaths.of(root)
    paths.root.mkdir(parents=True)
    engine = open_catalog(paths.catalog, create=True)
    identity = {"model": "synthetic", "weights_sha256": "none", "dim": data.dim, "backbone_config": {}, "preprocess": {}}
    create_info(engine, identity, "", 10_000_000)
    engine.dispose()
    n = len(data.labels)

    def items():
        for s in range(0, n, BLOCK):
            for j, v in enumerate(data.vectors(s, min(n, s + BLOCK))):
                i = s + j
                yield Record(-1, f"/synthetic/{i}.jpg", 0, 0.0, f"{i:032x}", None, 0, 0, -1), v

    commit_vectors(paths, items(), 10_000_000, commit_every=BLOCK)
    return root


def scores(selected_components: np.ndarray, components: int, present: int) -> dict:
    hist = np.bincount(selected_components, minlength=components).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log(p)).sum())
    return {"covered": int((hist > 0).sum()), "of": present, "kl_to_uniform": round(float(np.log(components)) - entropy, 4),
            "largest_share": round(float(hist.max() / hist.sum()), 4)}


def run(n: int, args) -> list[dict]:
    data = LongTail(n, args.components, args.dim, args.zipf, args.seed)
    work = Path(tempfile.mkdtemp(prefix=f"curate_balance_{n}_", dir=args.workdir))
    try:
        t = time.perf_counter()
        reader = open_index(build_index(work / "idx", data))
        ids = np.sort(reader.ids())
        truth = data.labels[ids]  # ids were handed out in order, 0..n-1
        rows = StoreRows(reader.store, ids)
        target = int(round(args.fraction * n))
        print(f"# n={n:,}: {args.components:,} components (largest {data.sizes.max():,}, "
              f"{int((data.sizes <= 2).sum()):,} of size <= 2), target {target:,}; index built in "
              f"{time.perf_counter() - t:.0f} s", flush=True)
        out = []
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(n, target, replace=False)
        out.append({"method": "random", **scores(truth[pick], args.components, args.components)})
        levels = parse_levels(args.levels)
        params = KMeansParams(iters=args.iters, resample_points=args.resample_points,
                              resample_strategy=args.resample_strategy)
        flat_steps = per_level([int(v) for v in args.flat_resample.split(",")], 1, "--flat-resample")
        hier_steps = per_level([int(v) for v in args.resample.split(",")], len(levels), "--resample")
        for name, ks, steps in [("flat k-means", levels[:1], flat_steps), ("hierarchical", levels, hier_steps)]:
            t = time.perf_counter()
            h = build_hierarchy(rows, ids, ks, steps, params, seed=args.seed, progress=not args.quiet)
            seconds = time.perf_counter() - t
            chosen = balanced_sample(h, target, args.strategy, args.seed)
            out.append({"method": name, "levels": ks, "resample": steps, **scores(truth[chosen], args.components,
                                                                                   args.components),
                        "cluster_seconds": round(seconds, 1)})
        if not args.no_ablation:
            # The hierarchy's own leaves, sampled as one level: level 1 is seeded alike whatever
            # the levels above, so these are the clusters of flat k-means with its resampling.
            leaves = Hierarchy(h.ids, h.labels, h.sims, h.centroids[:1], [])
            chosen = balanced_sample(leaves, target, args.strategy, args.seed)
            out.append({"method": "flat k-means + resampling (ablation)", "levels": levels[:1],
                        "resample": hier_steps[:1], **scores(truth[chosen], args.components, args.components)})
        for r in out:
            r["n"] = n
            print(json.dumps(r), flush=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--components", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--zipf", type=float, default=1.0, help="exponent of the component sizes")
    p.add_argument("--fraction", type=float, default=0.1, help="share of the pool to select")
    p.add_argument("--levels", default="10000,1000,100", help="hierarchy, finest first (flat k-means uses the first)")
    p.add_argument("--resample", default="5", help="resampling steps per level of the hierarchy")
    p.add_argument("--flat-resample", default="0", help="resampling steps of flat k-means")
    p.add_argument("--resample-points", type=int, default=10)
    p.add_argument("--resample-strategy", default="closest", choices=["closest", "random"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--strategy", default="random", choices=["random", "closest"], help="pick inside a leaf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default=None)
    p.add_argument("--no-ablation", action="store_true", help="skip flat k-means with the hierarchy's resampling")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, {args.threads} threads; "
          f"levels {args.levels}, resample {args.resample}, resample points {args.resample_points} "
          f"({args.resample_strategy}), zipf {args.zipf}", flush=True)
    for n in args.sizes:
        run(n, args)


if __name__ == "__main__":
    main()
