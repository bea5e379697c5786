"""Run by tests/test_curate.py, alone and under torchrun: `dinoret curate clusters` on two
indexes in one process (group), so one launch covers both k-means paths: a level computed
directly (sharded Lloyd, sums all-reduced) and one computed in two stages (cells shared out).

The process group, when there is one, is made here once and used by both commands."""
from __future__ import annotations

import os
import sys

import torch.distributed as dist

from dinoret.cli import main

RUNS = {"direct": ["--clusters", "100,10"], "two_stage": ["--clusters", "300,30"]}

if __name__ == "__main__":
    root = sys.argv[1]
    group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if group:
        dist.init_process_group("gloo")
    try:
        for name, levels in RUNS.items():
            main(["curate", "clusters", "--index", f"{root}/{name}", *levels, "--resample", "1", "--device", "cpu",
                  "--seed", "2", "-q"], standalone_mode=False)
    finally:
        if group:
            dist.destroy_process_group()
