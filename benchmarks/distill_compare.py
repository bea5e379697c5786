"""How sure is a difference between two trained backbones? Paired bootstrap intervals of the
`benchmarks/train_eval.py` figures (UKBench N-S, Oxford leave-one-out 1-NN and weighted
20-NN) between backbones evaluated on the same images.

N-S is resampled by object (14 objects of 4 views: an image's hits depend on its object),
the kNN figures by photo (567). Prints each backbone's figures, then for every backbone
against every ``--against`` backbone the mean difference and its 95% interval.

\b
Example (the README's distillation study):
  .venv/bin/python benchmarks/distill_compare.py teacher=runs/teacher_3k/teacher_backbone.pth \\
      scratch0=runs/distill_3k/scratch/teacher_backbone.pth \\
      scratch1=runs/distill_3k_scratch_s1/scratch/teacher_backbone.pth \\
      hybrid0=runs/distill_3k_h4/hybrid/student_backbone.pth \\
      hybrid1=runs/distill_3k_h4s1/hybrid/student_backbone.pth \\
      feature=runs/distill_3k/feature/student_backbone.pth --against scratch0 scratch1 teacher
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from train_eval import knn_correct, ukbench_hits  # noqa: E402

from dinoret.core.weights import load_backbone  # noqa: E402
from dinoret.indexer.embed import Embedder  # noqa: E402
from dinoret.indexer.preprocess import Preprocess  # noqa: E402


def outcomes(weights: Path, data: Path, crop: int) -> dict[str, np.ndarray]:
    """Per-unit outcomes: N-S per object (mean hits of its 4 views), kNN per photo (0/1)."""
    embedder = Embedder(load_backbone(weights=weights), Preprocess(resize=crop * 8 // 7, crop=crop), device="cpu")
    hits, groups = ukbench_hits(embedder, data)
    per_object = np.array([hits[groups == g].mean() for g in np.unique(groups)])
    return {"ukbench_ns": per_object, **{k: v.astype(float) for k, v in knn_correct(embedder, data).items()}}


def paired_interval(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n: int = 10_000) -> list[float]:
    """[mean of a - b, 2.5th and 97.5th percentile of its bootstrap distribution]."""
    d = a - b
    means = d[rng.integers(0, len(d), (n, len(d)))].mean(1)
    return [round(float(d.mean()), 3), round(float(np.percentile(means, 2.5)), 3),
            round(float(np.percentile(means, 97.5)), 3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("backbones", nargs="+", metavar="NAME=WEIGHTS")
    ap.add_argument("--against", nargs="+", required=True, metavar="NAME", help="the backbones compared with (after the backbones)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--crops", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    named = dict(b.split("=", 1) for b in args.backbones)
    if missing := set(args.against) - set(named):
        ap.error(f"--against names no backbone: {', '.join(sorted(missing))}")
    rng = np.random.default_rng(args.seed)
    result = {}
    for crop in args.crops:
        per = {name: outcomes(Path(w), args.data, crop) for name, w in named.items()}
        figures = {name: {k: round(float(v.mean()), 3) for k, v in o.items()} for name, o in per.items()}
        differences = {f"{a} - {b}": {k: paired_interval(per[a][k], per[b][k], rng) for k in per[a]}
                       for a in named if a not in args.against for b in args.against}
        result[f"crop{crop}"] = {"figures": figures, "differences [mean, 2.5%, 97.5%]": differences}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
