"""Per-iteration schedules (lr, weight decay, teacher momentum and temperature), as in DINOv2."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dinoret.trainer.config import total_iterations


class CosineScheduler:
    """``freeze_iters`` zeros, a linear warm-up, then a cosine from ``base_value`` to ``final_value``;
    ``final_value`` past the end (the official ``dinov2.utils.utils.CosineScheduler``)."""

    def __init__(self, base_value: float, final_value: float, total_iters: int, warmup_iters: int = 0,
                 start_warmup_value: float = 0.0, freeze_iters: int = 0) -> None:
        self.final_value = final_value
        self.total_iters = total_iters
        freeze = np.zeros(freeze_iters)
        warmup = np.linspace(start_warmup_value, base_value, warmup_iters)
        iters = np.arange(total_iters - warmup_iters - freeze_iters)
        cosine = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / max(len(iters), 1)))
        self.schedule = np.concatenate((freeze, warmup, cosine))
        assert len(self.schedule) == total_iters, "warm-up and freeze are longer than the run"

    def __getitem__(self, it: int) -> float:
        return float(self.final_value if it >= self.total_iters else self.schedule[it])


@dataclass
class Schedules:
    lr: CosineScheduler
    wd: CosineScheduler
    momentum: CosineScheduler
    teacher_temp: CosineScheduler
    last_layer_lr: CosineScheduler

    def at(self, it: int) -> dict[str, float]:
        return {
            "lr": self.lr[it],
            "wd": self.wd[it],
            "mom": self.momentum[it],
            "teacher_temp": self.teacher_temp[it],
            "last_layer_lr": self.last_layer_lr[it],
        }


def build_schedules(cfg: dict, lr: float) -> Schedules:
    """The official ``build_schedulers``; ``lr`` is the learning rate after the scaling rule."""
    epoch = cfg["train"]["OFFICIAL_EPOCH_LENGTH"]
    total = total_iterations(cfg)
    o, t = cfg["optim"], cfg["teacher"]
    # A short run (tests, smoke runs) may have fewer iterations than the official warm-ups.
    warmup = min(int(o["warmup_epochs"] * epoch), total)
    temp_warmup = min(int(t["warmup_teacher_temp_epochs"] * epoch), total)
    lr_args = dict(base_value=lr, final_value=o["min_lr"], total_iters=total, warmup_iters=warmup)
    last_layer = CosineScheduler(**lr_args)
    # The last layer of the heads stays frozen for the first epoch(s): it stabilises the start.
    last_layer.schedule[: int(o["freeze_last_layer_epochs"] * epoch)] = 0
    return Schedules(
        lr=CosineScheduler(**lr_args),
        wd=CosineScheduler(o["weight_decay"], o["weight_decay_end"], total),
        momentum=CosineScheduler(t["momentum_teacher"], t["final_momentum_teacher"], total),
        teacher_temp=CosineScheduler(
            t["teacher_temp"], t["teacher_temp"], temp_warmup, warmup_iters=temp_warmup,
            start_warmup_value=t["warmup_teacher_temp"],
        ),
        last_layer_lr=last_layer,
    )
