"""The embedding API: images in, L2-normalised float32 ``[N, D]`` DINOv2 class tokens out."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinoret.indexer.preprocess import Preprocess
from dinoret.core.devices import autocast, resolve_device
from dinoret.core.weights import Backbone, load_backbone


class Embedder:
    """A backbone and the preprocessing that goes with it, on one device, at one precision.

    ``precision="int8"`` runs the transformer trunk with int8 weights in ONNX Runtime on the
    CPU (``dinoret.indexer.int8``), whatever ``device`` says: vectors of an int8 index must
    be made the same way on every machine."""

    def __init__(self, backbone: Backbone, preprocess: Preprocess | None = None, device: str | torch.device = "auto",
                 precision: str = "fp32") -> None:
        from dinoret.indexer.int8 import check_precision, int8_forward

        self.backbone = backbone
        self.preprocess = preprocess or Preprocess()
        self.precision = check_precision(precision)
        self.device = torch.device("cpu") if precision == "int8" else resolve_device(device)
        self.model = backbone.model.to(self.device).eval()
        self._forward = int8_forward(self.model, backbone.weights_sha256) if precision == "int8" else self.model

    @classmethod
    def load(cls, name: str | None = None, weights: str | None = None, preprocess: Preprocess | None = None,
             device: str | torch.device = "auto", sha256: str | None = None,
             precision: str = "fp32") -> "Embedder":
        """Load a backbone (see :func:`dinoret.core.weights.load_backbone`; ``sha256``: the weights
        file's, when known) to run at ``precision`` (fp32, or int8 on the CPU). An existing index's
        embedder comes from :func:`dinoret.indexer.index_embedder.load_index_embedder`, which checks it."""
        return cls(load_backbone(name, weights, sha256=sha256), preprocess, device, precision)

    @property
    def dim(self) -> int:
        return self.backbone.dim

    def identity(self) -> dict:
        """What must match between a collection and its queries."""
        return {
            "model": self.backbone.name,
            "weights_sha256": self.backbone.weights_sha256,
            "dim": self.dim,
            "backbone_config": self.backbone.config.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "precision": self.precision,
        }

    @torch.inference_mode()
    def embed_batch(self, x: torch.Tensor) -> np.ndarray:
        """``x``: preprocessed [B, 3, H, W] (one size per batch)."""
        x = x.to(self.device, non_blocking=True)
        with autocast(self.device):
            feats = self._forward(x)
        return F.normalize(feats.float(), dim=-1).cpu().numpy()

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed PIL images; in ``whole`` mode images of different shapes go in separate batches."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        tensors = [self.preprocess(img) for img in images]
        for i, t in enumerate(tensors):
            by_shape[tuple(t.shape)].append(i)
        for idx in by_shape.values():
            for s in range(0, len(idx), batch_size):
                chunk = idx[s : s + batch_size]
                out[chunk] = self.embed_batch(torch.stack([tensors[i] for i in chunk]))
        return out
