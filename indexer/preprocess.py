"""Image -> tensor preprocessing, described by data so a query is embedded like its collection.

``Preprocess.to_dict()`` is stored in the catalog; ``Preprocess.from_dict`` rebuilds the
exact transform at query time.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH = 14

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class Preprocess:
    """``mode="crop"``: the official DINOv2 evaluation transform (resize the shorter side to
    ``resize``, centre crop ``crop``). ``mode="whole"``: no crop, the shorter side resized to
    ``crop`` and both sides rounded to a multiple of 14 (the long side capped at
    ``max_long``), so nothing at the borders is lost: better for near-duplicate work."""

    mode: str = "crop"
    resize: int = 256
    crop: int = 224
    max_long: int = 448
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.mode not in ("crop", "whole"):
            raise ValueError(f"preprocess mode must be 'crop' or 'whole', not {self.mode!r}")
        if self.crop % PATCH:
            raise ValueError(f"crop size {self.crop} is not a multiple of {PATCH}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)

    def draft_size(self) -> int:
        """The smallest side a decoder may reduce to (JPEG ``draft``) without losing detail."""
        return self.resize if self.mode == "crop" else self.crop

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the tensor this transform makes from an image of that size."""
        if self.mode == "crop":
            return self.crop, self.crop
        scale = self.crop / min(width, height)
        scale = min(scale, self.max_long / max(width, height))
        return (
            max(PATCH, round(width * scale / PATCH) * PATCH),
            max(PATCH, round(height * scale / PATCH) * PATCH),
        )

    def resize_image(self, img: Image.Image) -> Image.Image:
        """RGB image resized (and cropped) to the network's input size."""
        resample = _RESAMPLE[self.interpolation]
        w, h = img.size
        if self.mode == "whole":
            return img.resize(self.output_size(w, h), resample)
        # Same arithmetic as torchvision's Resize(int) + CenterCrop, the official transform.
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize * long / short)
        nw, nh = (self.resize, new_long) if w <= h else (new_long, self.resize)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample)
        left = int(round((nw - self.crop) / 2.0))
        top = int(round((nh - self.crop) / 2.0))
        return img.crop((left, top, left + self.crop, top + self.crop))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Float tensor [3, H, W], normalised with the ImageNet statistics."""
        arr = np.asarray(self.resize_image(img.convert("RGB")), dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
