"""Re-index speed: `dinoret index` over a collection that has not changed (or barely).

Builds an index of N small generated images (default 10,000) with a tiny random ViT (dim
64, depth 2: the first build is quick, and the model does not matter for what is timed),
then times, through the real CLI (`python -m dinoret index PHOTOS --index IDX -q`, a new
process each time, imports included):

* a re-index with nothing changed (several times; the median is reported);
* the same after `touch`-ing some files (new mtime, same bytes: hashed, never decoded);
* the same after adding some new files (the only case that loads the model).

It also checks, in this process, that the no-change and touch runs load no model and hash
no weights file (the loader and the hash function are replaced by ones that fail).

    python benchmarks/reindex_speed.py                  # 10,000 files in a temporary folder
    python benchmarks/reindex_speed.py --n 2000 --keep /tmp/reindex
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_photos(root: Path, n: int, start: int = 0) -> None:
    """``n`` small distinct JPEGs (64x48 random colour blocks), 100 per folder."""
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        block = rng.integers(0, 256, size=(3, 4, 3), dtype=np.uint8)
        folder = root / f"d{i // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(block).resize((64, 48), Image.Resampling.BILINEAR).save(folder / f"img{i:06d}.jpg", quality=85)


def tiny_weights(path: Path) -> Path:
    import torch

    from dinoret.core.models import build_model
    from dinoret.core.weights import save_backbone

    torch.manual_seed(0)
    save_backbone(path, build_model("dinov2_vits14", embed_dim=64, depth=2, num_heads=2, img_size=224), name="tiny")
    return path


def run_cli(*args: str) -> tuple[float, str]:
    """Wall seconds of ``python -m dinoret ARGS`` (a fresh process) and its output."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dinoret", *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"dinoret {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return wall, r.stdout.strip().splitlines()[0]


def check_in_process(photos: Path, index: Path) -> str:
    """Run a no-change re-index in this process with model loading and weight hashing made
    to fail: it passes only if neither happens."""
    from click.testing import CliRunner

    import dinoret.core.files
    import dinoret.core.weights
    import dinoret.indexer.embed
    import dinoret.indexer.index_embedder
    from dinoret.cli import main

    def forbidden(*a, **k):
        raise AssertionError("model loaded or weights hashed")

    targets = [(dinoret.core.weights, "load_backbone"), (dinoret.indexer.embed, "load_backbone"),
               (dinoret.core.files, "file_sha256"), (dinoret.core.weights, "file_sha256"),
               (dinoret.indexer.index_embedder, "file_sha256")]
    saved = [getattr(m, name) for m, name in targets]
    for m, name in targets:
        setattr(m, name, forbidden)
    try:
        r = CliRunner().invoke(main, ["index", str(photos), "--index", str(index), "-q"])
    finally:
        for (m, name), value in zip(targets, saved):
            setattr(m, name, value)
    if r.exit_code != 0:
        raise SystemExit(f"the no-change run loaded the model or hashed the weights:\n{r.output}{r.exception!r}")
    return r.output.strip().splitlines()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images in the collection")
    ap.add_argument("--repeats", type=int, default=5, help="no-change runs timed (median reported)")
    ap.add_argument("--touch", type=int, default=1000, help="files touched (new mtime, same bytes)")
    ap.add_argument("--add", type=int, default=100, help="new files added for the last run")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temporary folder)")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="dinoret-reindex-"))
    work.mkdir(parents=True, exist_ok=True)
    photos, index = work / "photos", work / "index"
    print(f"machine: {platform.machine()} CPU, {os.cpu_count()} cores; python {platform.python_version()}; work {work}")
    try:
        if not index.exists():
            t0 = time.perf_counter()
            make_photos(photos, args.n)
            print(f"generated {args.n:,} JPEGs (64x48) in {time.perf_counter() - t0:.1f} s")
            weights = tiny_weights(work / "tiny.pth")
            wall, line = run_cli("index", str(photos), "--index", str(index), "--weights", str(weights), "-q")
            print(f"first build: {wall:.1f} s  [{line}]")

        n = sum(1 for _ in photos.rglob("*.jpg"))  # more than --n when a kept folder is run again
        print(f"in-process check, loader and weight hashing made to fail: ok  [{check_in_process(photos, index)}]")
        walls = []
        for _ in range(args.repeats):
            wall, line = run_cli("index", str(photos), "--index", str(index), "-q")
            walls.append(wall)
        print(f"no-change re-index of {n:,} files: median {statistics.median(walls):.2f} s "
              f"(min {min(walls):.2f}, max {max(walls):.2f}, {args.repeats} runs; new process each)  [{line}]")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dinoret.indexer.build, dinoret.cli"], check=True)
        print(f"  of which starting Python and importing what the run needs (sqlalchemy, numpy, lmdb, PIL; "
              f"not torch, not Faiss): {time.perf_counter() - t0:.2f} s; load average {os.getloadavg()[0]:.1f}")

        probe = ("import sys; from dinoret.cli import main; "
                 f"main(['index', {str(photos)!r}, '--index', {str(index)!r}, '-q'], standalone_mode=False); "
                 "print('torch imported:', 'torch' in sys.modules, '; Faiss imported:', 'faiss' in sys.modules)")
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
        print(f"  {r.stdout.strip().splitlines()[-1]}")

        files = sorted(photos.rglob("*.jpg"))
        later = time.time() + 60
        for p in files[: args.touch]:
            os.utime(p, (later, later))
        wall, line = run_cli("index", str(photos), "--index", str(index), "-q")
        print(f"re-index after touching {args.touch:,} files (same bytes): {wall:.2f} s  [{line}]")

        make_photos(photos, args.add, start=n)
        wall, line = run_cli("index", str(photos), "--index", str(index), "-q")
        print(f"re-index with {args.add} new files (loads the model): {wall:.2f} s  [{line}]")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
