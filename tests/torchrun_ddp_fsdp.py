"""Run by tests/test_train_run.py and tests/test_distill.py under torchrun: ``dinoret train``
(or ``dinoret distill``) twice in one process group, with DDP and then with FSDP, so one
launch (process start-up dominates) covers both.

The group is made here, once: the trainer then uses it and leaves it open (re-creating a
group under torchrun's rendezvous store would hang).

Arguments: ``COMMAND DATA OUT [ARGS...]``; each mode writes into ``OUT/<mode>``."""
from __future__ import annotations

import gc
import sys

import torch.distributed as dist

from dinoret.cli import main

if __name__ == "__main__":
    command, data, out, *args = sys.argv[1:]
    dist.init_process_group("gloo")
    try:
        for mode in ("ddp", "fsdp"):
            main([command, data, "--output", f"{out}/{mode}", *args, "--set", f"train.distributed={mode}", "--quiet"],
                 standalone_mode=False)
        # As core.distributed.teardown does: no collective may be in flight when the group ends.
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()
