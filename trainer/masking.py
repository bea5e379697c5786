"""iBOT block masking and the batch collation that goes with it (official ``dinov2/data``).

Randomness comes from an explicit ``random.Random`` so a batch is a pure function of
its seed: that is what lets ``--resume`` continue bit for bit.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch


class MaskingGenerator:
    """Masks made of random rectangles (area >= ``min_num_patches``, aspect 0.3-3.3) on a patch grid."""

    def __init__(self, input_size: int | tuple[int, int], num_masking_patches: int | None = None,
                 min_num_patches: int = 4, max_num_patches: float | None = None, min_aspect: float = 0.3,
                 max_aspect: float | None = None) -> None:
        self.height, self.width = input_size if isinstance(input_size, tuple) else (input_size, input_size)
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = num_masking_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))

    def _mask(self, mask: np.ndarray, max_mask_patches: int, rng: random.Random) -> int:
        delta = 0
        for _ in range(10):
            target_area = rng.uniform(self.min_num_patches, max_mask_patches)
            aspect_ratio = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                num_masked = mask[top : top + h, left : left + w].sum()
                if 0 < h * w - num_masked <= max_mask_patches:  # only grow by what is still allowed
                    for i in range(top, top + h):
                        for j in range(left, left + w):
                            if not mask[i, j]:
                                mask[i, j] = True
                                delta += 1
                if delta > 0:
                    break
        return delta

    def __call__(self, num_masking_patches: int, rng: random.Random) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            delta = self._mask(mask, min(num_masking_patches - count, self.max_num_patches), rng)
            if delta == 0:
                break
            count += delta
        return mask


def mask_generator_for(crop_size: int, patch_size: int) -> MaskingGenerator:
    """The official setting: at most half the patches in one rectangle."""
    grid = crop_size // patch_size
    return MaskingGenerator((grid, grid), max_num_patches=0.5 * grid * grid)


def collate(samples: list[dict], mask_ratio_min_max: tuple[float, float], mask_probability: float,
            mask_generator: MaskingGenerator, rng: random.Random) -> dict:
    """Stack crops (crop-major: all first global crops, then all second ones) and draw iBOT masks.

    A fraction ``mask_probability`` of the global crops is masked, with ratios spread
    evenly over ``mask_ratio_min_max`` (one sub-interval each, so the batch covers the range).
    """
    n_global = len(samples[0]["global_crops"])
    n_local = len(samples[0]["local_crops"])
    global_crops = torch.stack([s["global_crops"][i] for i in range(n_global) for s in samples])
    local_crops = (
        torch.stack([s["local_crops"][i] for i in range(n_local) for s in samples]) if n_local else None
    )
    b = len(global_crops)
    n_tokens = mask_generator.num_patches
    n_masked_samples = int(b * mask_probability)
    probs = np.linspace(*mask_ratio_min_max, n_masked_samples + 1)
    masks = [
        torch.from_numpy(mask_generator(int(n_tokens * rng.uniform(probs[i], probs[i + 1])), rng))
        for i in range(n_masked_samples)
    ]
    masks += [torch.from_numpy(mask_generator(0, rng)) for _ in range(n_masked_samples, b)]
    rng.shuffle(masks)
    collated_masks = torch.stack(masks).flatten(1)
    mask_indices = collated_masks.flatten().nonzero().flatten()
    # Each masked patch weighs 1/(masked patches of its image): every image counts the same.
    masks_weight = (1 / collated_masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(collated_masks)[collated_masks]
    return {
        "global_crops": global_crops,
        "local_crops": local_crops,
        "masks": collated_masks,
        "mask_indices": mask_indices,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.full((1,), fill_value=mask_indices.shape[0], dtype=torch.long),
    }
