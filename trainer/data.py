"""Training batches from a list of image files, each batch a pure function of (seed, iteration, rank).

Item ``it`` of :class:`SSLBatches` is the collated batch that this rank trains on at
iteration ``it``: files come from a per-epoch permutation of the list (sharded across
ranks), and every crop and mask is drawn from generators seeded by the sample's
position in that stream. So a resumed run sees exactly the batches an uninterrupted
one would, whatever the number of loader workers.

Files that cannot be read are skipped: ``load_image`` raises, the next file of the
permutation takes the place, and the batch reports ``(path, reason)`` so the loop can
count and log it.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from dinoret.trainer.augment import DataAugmentationDINO
from dinoret.trainer.config import total_iterations
from dinoret.core.errors import UserError
from dinoret.trainer.masking import collate, mask_generator_for

LoadImage = Callable[[str], Image.Image]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, position, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


@lru_cache(maxsize=2)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class SSLBatches(Dataset):
    def __init__(self, files: Sequence[str], load_image: LoadImage, cfg: dict, rank: int = 0, world_size: int = 1) -> None:
        if not files:
            raise UserError("no images to train on")
        self.files = [str(f) for f in files]
        self.load_image = load_image
        self.rank, self.world_size = rank, world_size
        self.seed = int(cfg["train"]["seed"])
        self.batch_size = int(cfg["train"]["batch_size_per_gpu"])
        self.total = total_iterations(cfg)
        self.high_res_from = self.total - int(cfg["train"]["high_res_iterations"])
        c, ib = cfg["crops"], cfg["ibot"]
        self.mask_ratio = tuple(ib["mask_ratio_min_max"])
        self.mask_probability = float(ib["mask_sample_probability"])
        patch = cfg["student"]["patch_size"]
        self.phases = {}
        for name, g, l in (("base", c["global_crops_size"], c["local_crops_size"]),
                           ("high_res", c["high_res_global_crops_size"], c["high_res_local_crops_size"])):
            aug = DataAugmentationDINO(c["global_crops_scale"], c["local_crops_scale"], c["local_crops_number"], g, l)
            self.phases[name] = (aug, mask_generator_for(g, patch))
        self.bad: dict[str, str] = {}  # per worker process: files already known to fail

    def __len__(self) -> int:
        return self.total

    def _load(self, position: int, skipped: list[tuple[str, str]]) -> Image.Image:
        n = len(self.files)
        perm = _permutation(n, self.seed, position // n)
        for t in range(n):
            path = self.files[perm[(position + t) % n]]
            if path in self.bad:
                continue
            try:
                return self.load_image(path)
            except Exception as e:  # the loader raises whatever it raises for a bad file
                reason = getattr(e, "reason", None) or str(e).splitlines()[0][:120] or type(e).__name__
                self.bad[path] = reason
                skipped.append((path, reason))
        raise UserError(f"none of the {n} training files could be read as an image")

    def __getitem__(self, it: int) -> dict:
        aug, masker = self.phases["high_res" if it >= self.high_res_from else "base"]
        samples, skipped = [], []
        first = (it * self.world_size + self.rank) * self.batch_size
        for position in range(first, first + self.batch_size):
            image = self._load(position, skipped)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, position))
                samples.append(aug(image))
        batch = collate(samples, self.mask_ratio, self.mask_probability, masker,
                        random.Random(derive_seed(self.seed, it, self.rank, 1)))
        batch["skipped"] = skipped
        batch["iteration"] = it
        return batch
