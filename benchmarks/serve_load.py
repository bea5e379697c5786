"""Load test of `dinoret serve`: /api/search by indexed id and by upload, on 127.0.0.1.

Builds (once, in --workdir) an index of N synthetic vectors, clustered like real embeddings
(IVF-PQ past 50k, the index type `dinoret index` picks) with the identity of a ViT-S/14
whose random weights are saved beside it, so uploads are embedded by the real model.
Starts the real server (`dinoret serve`, waitress) as a subprocess, sends a fixed number
of requests from C concurrent clients (threads, keep-alive HTTP/1.1 connections), and
prints requests/s, p50/p95/p99 latency and the number of errors (any status but 200).

    python benchmarks/serve_load.py                               # 100k vectors, 2000 + 200 requests, 8 clients
    python benchmarks/serve_load.py --vectors 20000 --requests 500 --upload-requests 50
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHUNK = 10_000


def build_synthetic_index(index_dir: Path, n: int, seed: int = 0) -> None:
    """N clustered unit vectors written through the indexer's own stores (vectors/, LMDB, catalog, shards)."""
    import torch
    from sqlalchemy.orm import Session
    from tqdm import tqdm

    from dinoret.indexer.catalog import IndexInfo, open_catalog
    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.layout import IndexPaths
    from dinoret.indexer.meta import MetaStore, Record
    from dinoret.indexer.sync import sync_shards
    from dinoret.indexer.vectors import write_chunk
    from dinoret.core.models import build_model

    torch.manual_seed(seed)
    weights = index_dir.parent / "vits14_random.pth"
    torch.save(build_model("dinov2_vits14").state_dict(), weights)
    emb = Embedder.load("dinov2_vits14", str(weights), device="cpu")
    paths = IndexPaths.of(index_dir)
    paths.root.mkdir(parents=True)
    engine = open_catalog(paths.catalog, create=True)
    with Session(engine) as s, s.begin():
        s.add(IndexInfo(id=1, identity=emb.identity(), weights_path=str(weights), index_type="none", index_params={},
                        shard_size=1_000_000))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 100), emb.dim)).astype(np.float32)
    meta = MetaStore(paths.meta, readonly=False)
    try:
        for start in tqdm(range(0, n, CHUNK), desc="synthetic vectors", unit="chunk"):
            rows = min(CHUNK, n - start)
            v = centres[rng.integers(0, len(centres), rows)] + 0.5 * rng.standard_normal((rows, emb.dim), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            write_chunk(paths.vectors, meta.counters()["next_id"], v)
            meta.commit([Record(-1, f"/synthetic/{start + i:07d}.jpg", 1000, 0.0, f"synthetic-{start + i}", None, 224, 224, -1)
                         for i in range(rows)], shard_size=1_000_000)
        sync_shards(paths, engine, meta, emb.dim, show_progress=True)
    finally:
        meta.close()
    engine.dispose()


def start_server(index_dir: Path, threads: int, log: Path) -> tuple[subprocess.Popen, int]:
    err = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinoret", "serve", "--index", str(index_dir), "--host", "127.0.0.1", "--port", "0",
         "--threads", str(threads), "--device", "cpu"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            m = re.search(rb":(\d+)/", proc.stdout.readline())
            if m:
                return proc, int(m.group(1))
    proc.kill()
    raise SystemExit(f"server did not start; see {log}")


def multipart(image: bytes, k: int) -> tuple[bytes, str]:
    b = "dinoretbenchboundary"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"q.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def run_load(port: int, make_request, total: int, clients: int) -> dict:
    """``total`` requests split over ``clients`` threads; each keeps one connection open."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        mine, bad = [], []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, ctype = make_request(i)
            t = time.perf_counter()
            try:
                conn.request("POST", "/api/search", body=body, headers={"Content-Type": ctype})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200 or not json.loads(data)["results"]:
                    bad.append(f"{resp.status} {data[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError) as e:
                bad.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine.append(time.perf_counter() - t)
        conn.close()
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    start = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "rps": len(latencies) / wall, "p50": np.percentile(ms, 50),
            "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99), "errors": len(errors), "first_errors": errors[:3]}


def query_photo() -> bytes:
    photo = REPO.parent / "shared" / "data" / "ukbench_first56" / "images" / "ukbench00000.jpg"
    if photo.is_file():
        return photo.read_bytes()
    from PIL import Image

    buf = io.BytesIO()
    Image.effect_mandelbrot((640, 480), (-2, -1.2, 1, 1.2), 100).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vectors", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=2000, help="searches by indexed id")
    ap.add_argument("--upload-requests", type=int, default=200, help="searches by upload (each runs ViT-S/14 on CPU)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--threads", type=int, default=8, help="server threads (dinoret serve --threads)")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dinoret_serve_load",
                    help="where the synthetic index is built (reused when it exists)")
    args = ap.parse_args()

    index_dir = args.workdir / f"index-{args.vectors}"
    if not (index_dir / "catalog.db").is_file():
        args.workdir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        build_synthetic_index(index_dir, args.vectors)
        print(f"built a synthetic index of {args.vectors:,} vectors in {time.perf_counter() - t:.0f} s: {index_dir}")
    proc, port = start_server(index_dir, args.threads, args.workdir / "serve.log")
    try:
        rng = np.random.default_rng(1)
        ids = rng.integers(0, args.vectors, size=args.requests)
        by_id = lambda i: (json.dumps({"id": int(ids[i]), "k": args.k}).encode(), "application/json")  # noqa: E731
        upload_body = multipart(query_photo(), args.k)
        by_upload = lambda i: upload_body  # noqa: E731
        run_load(port, by_id, 4 * args.clients, args.clients)  # warm-up: shard loading, first model call
        run_load(port, by_upload, 2, 1)
        results = {
            "by id": run_load(port, by_id, args.requests, args.clients),
            "by upload": run_load(port, by_upload, args.upload_requests, args.clients),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"\n{args.vectors:,} vectors, k={args.k}, {args.clients} clients, {args.threads} server threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'/api/search':12s} {'requests':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>7s}")
    for name, r in results.items():
        print(f"{name:12s} {r['requests']:8d} {r['rps']:8.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} {r['errors']:7d}")
        for e in r["first_errors"]:
            print(f"  error: {e}")
    total_errors = sum(r["errors"] for r in results.values())
    print("zero errors" if total_errors == 0 else f"{total_errors} ERRORS")
    sys.exit(1 if total_errors else 0)


if __name__ == "__main__":
    main()
