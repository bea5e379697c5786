"""Wall time and peak memory of `dinoret curate clusters` on a synthetic index.

Builds an index of ``--size`` 384-d vectors (the long-tailed Gaussian components of
benchmarks/curate_balance.py: float16 ``vectors/`` chunks and records, as `dinoret index`
writes them; no shards, which clustering does not read), then runs the real command in a
fresh process and reports its wall time and peak resident memory (max RSS of that process
alone, so the benchmark's own data generation does not count), and its CPU time (user +
system: on a machine shared with other jobs the wall time says more about them).

\b
Examples:
  .venv/bin/python benchmarks/curate_speed.py --size 1000000 --clusters 10000,1000,100 --resample 5
  .venv/bin/python benchmarks/curate_speed.py --size 100000   (a quick check that it runs)
  .venv/bin/python benchmarks/curate_speed.py --size 1000000 --device cuda
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from curate_balance import LongTail, build_index  # noqa: E402


_MEASURE = (
    "import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(json.dumps({'maxrss_kb': u.ru_maxrss, 'cpu_s': u.ru_utime + u.ru_stime}), file=sys.stderr); "
    "sys.exit(r.returncode)"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--components", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--clusters", default="10000,1000,100")
    p.add_argument("--resample", default="5")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the index (in --workdir)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"curate_speed_{args.size}_", dir=args.workdir))
    try:
        t = time.perf_counter()
        data = LongTail(args.size, args.components, args.dim, 1.0, args.seed)
        index = build_index(work / "idx", data)
        del data
        build_s = time.perf_counter() - t
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "dinoret", "curate", "clusters", "--index", str(index), "--clusters", args.clusters,
               "--resample", args.resample, "--device", args.device, "--seed", str(args.seed), "-q"]
        # Through a small Python in between: a child forked straight from this (large) process
        # would count this process's pages in its own peak RSS until it execs.
        load_before = os.getloadavg()
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        load_after = os.getloadavg()
        if res.returncode != 0:
            raise SystemExit(res.stderr[-3000:])
        usage = json.loads(res.stderr.strip().splitlines()[-1])
        peak = usage["maxrss_kb"] * 1024
        out = {"size": args.size, "dim": args.dim, "clusters": args.clusters, "resample": args.resample,
               "device": args.device, "threads": args.threads, "wall_s": round(wall, 1),
               "cpu_s": round(usage["cpu_s"], 1),
               "peak_rss_gib": round(peak / 2**30, 3), "index_build_s": round(build_s, 1),
               "vectors_on_disk_gib": round(sum(f.stat().st_size for f in (index / "vectors").iterdir()) / 2**30, 3),
               "machine": f"{platform.machine()} {os.cpu_count()} cpus",
               # 1, 5 and 15-minute load averages as the command started and as it ended
               "load_average_before": [round(v, 2) for v in load_before],
               "load_average_after": [round(v, 2) for v in load_after],
               "command": " ".join(cmd[2:]), "command_output": res.stdout.strip()}
        print(json.dumps(out, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
