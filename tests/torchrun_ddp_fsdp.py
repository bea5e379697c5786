"""Run by tests/test_train_run.py under torchrun: ``dinoret train`` twice in one process group,
with DDP and then with FSDP, so one launch (process start-up dominates) covers both.

The group is made here, once: the trainer then uses it and leaves it open (re-creating a
group under torchrun's rendezvous store would hang)."""
from __future__ import annotations

import sys

import torch.distributed as dist

from dinoret.cli import main

if __name__ == "__main__":
    data, out, *sets = sys.argv[1:]
    dist.init_process_group("gloo")
    try:
        for mode in ("ddp", "fsdp"):
            main(["train", data, "--output", f"{out}/{mode}", *sets, "--set", f"train.distributed={mode}", "--quiet"],
                 standalone_mode=False)
    finally:
        dist.destroy_process_group()
