"""Near-duplicate detection quality: dinoret (DINOv2 cosine) against imagededup's hashes.

Same images, same pairs, same ground truth, one run. For each image set every pair of
images is scored by every method; a pair is positive when both images are in the same
ground-truth group (a photo and its edits), negative otherwise (unrelated photos, and for
UKBench other *views* of the same object: hard negatives, they are not copies).

Image sets (from ../shared/data):
  augly_copydetect     1 photo + 42 AugLy copy-detection edits of it, 2 unrelated photos
  imagededup_testdata  UKBench photos with flip/resize/rotation/gray copies, one photo in several
                       formats, distractors (byte-identical files counted once; corrupt ones skipped)
  generated            perception_testimages (10) + ukbench_first56 (56) originals, each with 15
                       edits made here with the `augly` package (crops, rotations, overlays, JPEG,
                       colour, flips, scale, pad, screenshot, blur)

Methods: dinoret with the given backbone (``crop`` and ``whole`` preprocessing: the exact
decode + preprocess + model path of ``dinoret index``), score = cosine; imagededup PHash,
DHash, WHash, score = 1 - Hamming distance / 64; imagededup CNN if its weights can load
(it downloads MobileNetV3 weights: offline it cannot run, and the output says so).

Printed per method and set: average precision (area under the PR curve), ROC AUC, and
precision / recall / F1 at each method's operating threshold: dinoret's ``--threshold``
(default: ``dinoret.retrieval.dedup.DEFAULT_THRESHOLD``), imagededup's own default (Hamming <= 10),
and a threshold *tuned* on the generated set (best F1 there) applied to the two others.
Curves (CSV) and a plot go to ``--out``.

\b
Examples:
  .venv/bin/python benchmarks/dedup_quality.py --weights random          # random-init ViT-S/14
  .venv/bin/python benchmarks/dedup_quality.py --weights runs/cpu_small/teacher_backbone.pth   # architecture from the file
  .venv/bin/python benchmarks/dedup_quality.py --weights dinov2_vits14_pretrain.pth --model dinov2_vits14
"""
from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_MODEL = "dinov2_vits14"
HASH_BITS = 64
IMAGEDEDUP_DEFAULT_DISTANCE = 10  # imagededup's find_duplicates default max_distance_threshold


# ---------------------------------------------------------------- image sets
def augly_copydetect(data: Path) -> list[tuple[str, str]]:
    root = data / "augly_copydetect"
    with open(root / "groups.csv") as f:
        return [(str(root / r["filename"]), r["group"]) for r in csv.DictReader(f)]


def imagededup_testdata(data: Path) -> list[tuple[str, str]]:
    from dinoret.indexer.decode import SkipFile, open_image, read_file
    from dinoret.indexer.discover import find_images
    from dinoret.indexer.file_dataset import content_hash

    seen, out = set(), []
    for p in find_images([data / "imagededup_testdata"]):
        try:
            data_bytes = read_file(p)[0]
            open_image(data_bytes)
        except SkipFile:
            continue  # the two deliberately corrupt JPEGs
        h = content_hash(data_bytes)
        if h in seen:
            continue
        seen.add(h)
        m = re.match(r"(ukbench\d+)", p.stem)
        out.append((str(p), m.group(1) if m else p.stem))
    return out


def _edits():
    import augly.image as A
    from PIL import Image

    return {
        "crop": lambda im: A.crop(im, x1=0.15, y1=0.15, x2=0.85, y2=0.85),
        "crop_corner": lambda im: A.crop(im, x1=0.0, y1=0.0, x2=0.6, y2=0.6),
        "rotate15": lambda im: A.rotate(im, degrees=15),
        "rotate90": lambda im: im.transpose(Image.Transpose.ROTATE_90),
        "text": lambda im: A.overlay_text(im, font_size=0.15, opacity=1.0, y_pos=0.4),
        "emoji": lambda im: A.overlay_emoji(im, emoji_size=0.3, x_pos=0.3, y_pos=0.3),
        "stripes": lambda im: A.overlay_stripes(im, line_width=0.3, line_opacity=0.6),
        "jpeg15": lambda im: A.encoding_quality(im, quality=15),
        "colour": lambda im: A.color_jitter(im, brightness_factor=1.3, contrast_factor=0.7, saturation_factor=1.8),
        "gray": A.grayscale,
        "hflip": A.hflip,
        "scale50": lambda im: A.scale(im, factor=0.5),
        "pad_square": lambda im: A.pad_square(im),
        "screenshot": lambda im: A.overlay_onto_screenshot(im),
        "blur": lambda im: A.blur(im, radius=3),
    }


def generated(data: Path, work: Path) -> list[tuple[str, str]]:
    """Originals and their augly edits (written once as PNG under ``work``, then reused)."""
    from PIL import Image

    originals = sorted((data / "perception_testimages" / "images").glob("*.jpg"))
    originals += sorted((data / "ukbench_first56" / "images").glob("*.jpg"))
    edits = _edits()
    out = []
    for n, src in enumerate(originals):
        group = f"{src.parent.parent.name}/{src.stem}"
        out.append((str(src), group))
        with Image.open(src) as im:
            im = im.convert("RGB")
            for name, edit in edits.items():
                dst = work / "generated" / src.parent.parent.name / src.stem / f"{name}.png"
                if not dst.is_file():
                    random.seed(n)  # augly picks random text/emoji/screenshots: fixed per original
                    np.random.seed(n)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    edit(im).convert("RGB").save(dst)
                out.append((str(dst), group))
    return out


# ---------------------------------------------------------------- methods
def dinoret_scores(paths: list[str], model: str | None, weights: str, mode: str, device: str) -> np.ndarray:
    """Cosine matrix from the index's own decode + preprocess + embed path."""
    import torch

    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.file_dataset import file_loader
    from dinoret.indexer.preprocess import Preprocess
    from dinoret.core.models import build_model
    from dinoret.core.weights import Backbone, load_backbone

    if weights == "random":
        torch.manual_seed(0)
        net = build_model(model or DEFAULT_MODEL)
        backbone = Backbone(net, model or DEFAULT_MODEL, net.cfg, "random-init", "random-init")
    else:
        # model None: the architecture the file describes (or its tensor shapes), so a small
        # backbone trained by `dinoret train` loads as trained, not as a ViT-S/14.
        backbone = load_backbone(model, weights)
    emb = Embedder(backbone, Preprocess(mode=mode), device)
    vec_of = {}
    for batch in file_loader(paths, emb.preprocess, batch_size=32, workers=0):
        if batch.failed:
            raise RuntimeError(f"{batch.failed[0].path}: {batch.failed[0].reason}")
        for tensor, members in batch.groups:
            for m, v in zip(members, emb.embed_batch(tensor)):
                vec_of[m.path] = v
    vecs = [vec_of[p] for p in paths]
    v = np.stack(vecs)
    return v @ v.T


def hash_scores(paths: list[str], method: str) -> np.ndarray:
    import imagededup.methods as M

    hasher = getattr(M, method)(verbose=False)
    bits = []
    for p in paths:
        h = hasher.encode_image(image_file=p)
        if h is None:
            raise RuntimeError(f"imagededup {method} could not hash {p}")
        bits.append(np.unpackbits(np.frombuffer(bytes.fromhex(h), np.uint8)))
    b = np.stack(bits).astype(np.int32)
    hamming = b @ (1 - b).T + (1 - b) @ b.T
    return 1.0 - hamming / HASH_BITS


def cnn_scores(paths: list[str]) -> np.ndarray:
    from imagededup.methods import CNN

    cnn = CNN(verbose=False)  # downloads MobileNetV3 weights from the internet
    v = np.stack([cnn.encode_image(image_file=p).ravel() for p in paths])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v.T


# ---------------------------------------------------------------- metrics
def pair_arrays(scores: np.ndarray, groups: list[str]) -> tuple[np.ndarray, np.ndarray]:
    iu = np.triu_indices(len(groups), k=1)
    g = np.asarray(groups)
    return scores[iu], g[iu[0]] == g[iu[1]]


def pr_curve(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, precision, recall) at every distinct score: pairs with score >= t."""
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return s[last], tp / (tp + fp), tp / max(1, y.sum())


def average_precision(s: np.ndarray, y: np.ndarray) -> float:
    _, p, r = pr_curve(s, y)
    return float(np.sum(np.diff(np.r_[0.0, r]) * p))


def roc_auc(s: np.ndarray, y: np.ndarray) -> float:
    """Probability that a positive pair outscores a negative one (ties count half)."""
    ranks = np.empty(len(s))
    order = np.argsort(s, kind="stable")
    ranks[order] = np.arange(1, len(s) + 1)
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = (sums / counts)[inv]  # average rank for ties
    npos, nneg = y.sum(), (~y).sum()
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def prf(s: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float, float]:
    pred = s >= t - 1e-9
    tp = float((pred & y).sum())
    p = tp / max(1, pred.sum())
    r = tp / max(1, y.sum())
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def best_f1_threshold(s: np.ndarray, y: np.ndarray) -> float:
    t, p, r = pr_curve(s, y)
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0)
    return float(t[int(np.argmax(f1))])


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True, help="backbone weights file, or 'random' for a random-init backbone")
    ap.add_argument("--model", default=None,
                    help=f"backbone name [{DEFAULT_MODEL} with --weights random, else read from the weights file]")
    ap.add_argument("--modes", nargs="+", default=["crop", "whole"], choices=["crop", "whole"])
    ap.add_argument("--threshold", type=float, default=None, help="dinoret operating threshold [DEFAULT_THRESHOLD]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--work", type=Path, default=Path("/tmp/dinoret_dedup_quality"), help="generated images (cache)")
    ap.add_argument("--out", type=Path, default=None, help="write results.json, curves.csv, pr_curves.png here")
    args = ap.parse_args()

    import torch

    from dinoret.retrieval.dedup import DEFAULT_THRESHOLD

    torch.set_num_threads(args.threads)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    weights_label = (f"random-init {args.model or DEFAULT_MODEL}" if args.weights == "random"
                     else f"{args.model or 'backbone'} {args.weights}")
    sets = {
        "generated": generated(args.data, args.work),  # first: thresholds are tuned on it
        "augly_copydetect": augly_copydetect(args.data),
        "imagededup_testdata": imagededup_testdata(args.data),
    }
    methods: dict[str, tuple] = {f"dinoret-{m}": ("dinoret", m) for m in args.modes}
    methods.update({h: ("hash", h) for h in ("PHash", "DHash", "WHash")})
    methods["imagededup-CNN"] = ("cnn", None)
    hash_t = 1.0 - IMAGEDEDUP_DEFAULT_DISTANCE / HASH_BITS

    pairs: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    unavailable: dict[str, str] = {}
    seconds: dict[str, float] = {}
    for sname, items in sets.items():
        paths, groups = [p for p, _ in items], [g for _, g in items]
        for mname, (kind, arg) in methods.items():
            if mname in unavailable:
                continue
            t0 = time.perf_counter()
            try:
                if kind == "dinoret":
                    scores = dinoret_scores(paths, args.model, args.weights, arg, args.device)
                elif kind == "hash":
                    scores = hash_scores(paths, arg)
                else:
                    scores = cnn_scores(paths)
            except Exception as e:  # only the CNN is expected to fail (no weights offline)
                if kind != "cnn":
                    raise
                unavailable[mname] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                continue
            seconds[mname] = seconds.get(mname, 0.0) + time.perf_counter() - t0
            pairs[sname, mname] = pair_arrays(scores, groups)
        print(f"# {sname}: {len(items)} images, {len(set(groups))} groups, "
              f"{int(pairs[sname, 'PHash'][1].sum())} positive / {int((~pairs[sname, 'PHash'][1]).sum())} negative pairs",
              flush=True)

    tuned = {m: best_f1_threshold(*pairs["generated", m]) for m in methods if m not in unavailable}
    rows = []
    for (sname, mname), (s, y) in pairs.items():
        operating = threshold if mname.startswith("dinoret") else hash_t
        p, r, f = prf(s, y, operating)
        tp, tr, tf = prf(s, y, tuned[mname])
        rows.append({"set": sname, "method": mname, "ap": average_precision(s, y), "roc_auc": roc_auc(s, y),
                     "threshold": operating, "precision": p, "recall": r, "f1": f,
                     "tuned_threshold": tuned[mname], "tuned_precision": tp, "tuned_recall": tr, "tuned_f1": tf})

    print(f"\n# weights: {weights_label}; dinoret threshold {threshold}; imagededup hashes at Hamming <= "
          f"{IMAGEDEDUP_DEFAULT_DISTANCE} (score {hash_t:.4f}); tuned = best F1 on 'generated'")
    print(f"# {platform.node()} {args.device}, {args.threads} threads; seconds per method: "
          + ", ".join(f"{m} {s:.0f}" for m, s in seconds.items()))
    print("| set | method | AP | ROC AUC | P / R / F1 at operating threshold | tuned threshold | P / R / F1 tuned |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['set']} | {r['method']} | {r['ap']:.3f} | {r['roc_auc']:.3f} | "
              f"{r['precision']:.3f} / {r['recall']:.3f} / {r['f1']:.3f} (t={r['threshold']:.4f}) | "
              f"{r['tuned_threshold']:.4f} | {r['tuned_precision']:.3f} / {r['tuned_recall']:.3f} / {r['tuned_f1']:.3f} |")
    for m, why in unavailable.items():
        print(f"# {m}: cannot run here ({why})")

    if args.out:
        write_outputs(args.out, pairs, rows, unavailable, weights_label, threshold)


def write_outputs(out: Path, pairs, rows, unavailable, weights_label, threshold) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"weights": weights_label, "threshold": threshold, "rows": rows, "unavailable": unavailable}, indent=1))
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "method", "threshold", "precision", "recall"])
        for (sname, mname), (s, y) in pairs.items():
            for t, p, r in zip(*pr_curve(s, y)):
                w.writerow([sname, mname, f"{t:.6f}", f"{p:.6f}", f"{r:.6f}"])
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    sets = sorted({s for s, _ in pairs})
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4.2))
    for ax, sname in zip(np.atleast_1d(axes), sets):
        for (s2, mname), (s, y) in pairs.items():
            if s2 == sname:
                _, p, r = pr_curve(s, y)
                ax.plot(r, p, label=mname)
        ax.set(title=sname, xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(fontsize=8)
    fig.suptitle(f"pairwise near-duplicate PR curves ({weights_label})")
    fig.tight_layout()
    fig.savefig(out / "pr_curves.png", dpi=90)


if __name__ == "__main__":
    main()
