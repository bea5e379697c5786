"""Does `dinoret train` learn? Train a small ViT on the real photos of ../shared/data and
compare its teacher with the same architecture with random weights: the run's own
initialisation, and a random init with LayerScale 1 (image-dependent random features).

Training data: every image under ../shared/data except the 55 Oxford5k query images
(self-supervised: no label is used). Evaluation, for both backbones (class token,
L2-normalised, cosine):

* UKBench N-S score on ``ukbench_first56`` (14 objects x 4 views): the mean number of the
  4 views of an object among an image's 4 nearest images, itself included (max 4);
* kNN accuracy on ``oxford5k_gt_subset/landmark_labels.csv`` (567 photos, 11 landmarks),
  leave-one-out: 1-NN, and DINO's weighted 20-NN vote (weights exp(cos / 0.07)).

\b
Examples:
  .venv/bin/python benchmarks/train_eval.py --output runs/cpu_small            # train (~10 min on 2 cores), evaluate
  .venv/bin/python benchmarks/train_eval.py --output runs/cpu_small --skip-train
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dinoret.api.training import load_training_image  # noqa: E402
from dinoret.indexer.discover import find_images  # noqa: E402
from dinoret.indexer.embed import Embedder  # noqa: E402
from dinoret.indexer.preprocess import Preprocess  # noqa: E402
from dinoret.trainer.config import largest_crop, make_config, read_config_file  # noqa: E402
from dinoret.trainer.ssl import SSLMetaArch, backbone_config  # noqa: E402
from dinoret.trainer.train import train  # noqa: E402
from dinoret.core.models import DinoVisionTransformer  # noqa: E402
from dinoret.core.weights import Backbone, load_backbone  # noqa: E402


def training_files(data: Path) -> list[str]:
    gt = json.loads((data / "oxford5k_gt_subset" / "gt_oxford5k.json").read_text())
    queries = {q["query"] for q in gt.values()}
    return [str(p) for p in find_images([data]) if p.stem not in queries]


def random_init(cfg: dict) -> Backbone:
    """The backbone the training run started from (train() seeds the same way before building).
    Its LayerScale starts at 1e-5 (the recipe), so its features hardly depend on the image."""
    torch.manual_seed(cfg["train"]["seed"])
    model = SSLMetaArch(cfg).teacher.backbone.eval()
    return Backbone(model, "random-init", backbone_config(cfg), "", "")


def random_layerscale1(cfg: dict) -> Backbone:
    """The same architecture with random weights and LayerScale 1 (the models' default init):
    image-dependent random features, the stronger random baseline."""
    torch.manual_seed(cfg["train"]["seed"])
    config = replace(backbone_config(cfg), init_values=1.0)
    return Backbone(DinoVisionTransformer(config).eval(), "random-ls1", config, "", "")


def _embed(embedder: Embedder, paths: list[Path]) -> np.ndarray:
    out = []
    for i in range(0, len(paths), 64):
        out.append(embedder.embed_images([load_training_image(str(p)) for p in paths[i : i + 64]]))
    return np.concatenate(out)


def ukbench_hits(embedder: Embedder, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """(per image: how many of its object's 4 views are among its 4 nearest images, the object)."""
    root = data / "ukbench_first56"
    rows = list(csv.DictReader(open(root / "groups.csv")))
    x = _embed(embedder, [root / "images" / r["filename"] for r in rows])
    groups = np.array([int(r["group"]) for r in rows])
    top4 = np.argsort(-(x @ x.T), axis=1, kind="stable")[:, :4]
    return (groups[top4] == groups[:, None]).sum(1), groups


def ukbench_ns(embedder: Embedder, data: Path) -> float:
    return float(ukbench_hits(embedder, data)[0].mean())


def knn_correct(embedder: Embedder, data: Path, k: int = 20, temperature: float = 0.07) -> dict[str, np.ndarray]:
    """Per Oxford photo, leave-one-out: is its 1-NN, and DINO's weighted k-NN vote, right?"""
    root = data / "oxford5k_gt_subset"
    rows = list(csv.DictReader(open(root / "landmark_labels.csv")))
    x = _embed(embedder, [root / "images_512" / r["image"] for r in rows])
    names = sorted({r["landmark"] for r in rows})
    y = np.array([names.index(r["landmark"]) for r in rows])
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)  # leave one out
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(y), len(names)))
    weights = np.exp(np.take_along_axis(sims, nn, 1) / temperature)
    for j in range(k):
        np.add.at(votes, (np.arange(len(y)), y[nn[:, j]]), weights[:, j])
    return {"knn1": y[nn[:, 0]] == y, f"knn{k}_weighted": votes.argmax(1) == y}


def knn_accuracy(embedder: Embedder, data: Path, k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in knn_correct(embedder, data, k, temperature).items()}


def evaluate(backbone: Backbone, data: Path, crop: int) -> dict:
    embedder = Embedder(backbone, Preprocess(resize=crop * 8 // 7, crop=crop), device="cpu")
    return {"ukbench_ns": ukbench_ns(embedder, data), **knn_accuracy(embedder, data)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--output", type=Path, default=REPO / "runs" / "cpu_small")
    ap.add_argument("--config", default=str(REPO / "configs" / "cpu_small.yaml"))
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--skip-train", action="store_true", help="evaluate the run already in --output")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-crops", type=int, nargs="+", default=[112, 224],
                    help="evaluation crop sizes (resize = crop * 8/7, as 256/224)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = training_files(args.data)
    t0 = time.time()
    if not args.skip_train:
        cfg = make_config([args.config], args.sets)
        summary = train(files, partial(load_training_image, draft_size=largest_crop(cfg)), args.output,
                        [args.config], args.sets)
        print(json.dumps({k: v for k, v in summary.items() if k != "skipped"}, indent=2))
    cfg = make_config(base=read_config_file(args.output / "config.yaml"))
    trained = load_backbone(weights=args.output / "teacher_backbone.pth")
    backbones = {"trained": trained, "random_init": random_init(cfg), "random_layerscale1": random_layerscale1(cfg)}
    result = {
        "training_images": len(files),
        "train_wall_s": None if args.skip_train else round(time.time() - t0, 1),
        "machine": f"{platform.machine()}, torch {torch.__version__}, {args.threads} threads",
        "architecture": {k: trained.config.to_dict()[k] for k in ("embed_dim", "depth", "num_heads", "patch_size", "img_size")},
        "results": {
            f"crop{crop}": {name: evaluate(b, args.data, crop) for name, b in backbones.items()}
            for crop in args.eval_crops
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
