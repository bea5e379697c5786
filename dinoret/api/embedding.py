"""``dinoret.embed`` (images in, L2-normalised embeddings out) and ``dinoret.load_backbone``."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dinoret.api.inputs import as_image, as_items
from dinoret.core.devices import resolve_device
from dinoret.core.errors import UserError
from dinoret.core.models import MODELS
from dinoret.core.weights import load_backbone as _load_backbone
from dinoret.core.weights import resolve_weights
from dinoret.indexer.build import DEFAULT_MODEL
from dinoret.indexer.embed import Embedder
from dinoret.indexer.preprocess import Preprocess

_cache_lock = threading.Lock()
_cached: tuple[tuple, Embedder] | None = None  # the last embedder dinoret.embed loaded (notebooks call it in loops)


def embed_with(embedder: Embedder, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Embed ``images`` with ``embedder``, decoding ``batch_size`` of them at a time (files as
    ``dinoret index`` decodes them) so that a long list never sits in memory decoded."""
    items = as_items(images)
    out = np.empty((len(items), embedder.dim), dtype=np.float32)
    draft = embedder.preprocess.draft_size()
    with tqdm(total=len(items), desc="embedding", unit="img", disable=not progress) as bar:
        for start in range(0, len(items), batch_size):
            chunk = [as_image(x, draft) for x in items[start : start + batch_size]]
            out[start : start + len(chunk)] = embedder.embed_images(chunk, batch_size=batch_size)
            bar.update(len(chunk))
    return out


def _embedder(model: str | None, weights: str | os.PathLike | None, preprocess: str, device: str) -> Embedder:
    global _cached
    try:
        prep = Preprocess(mode=preprocess)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = model or (None if weights else DEFAULT_MODEL)  # the default of a new index
    path = resolve_weights(model, weights)
    st = path.stat()
    key = (model, str(path.resolve()), st.st_size, st.st_mtime_ns, prep, device)
    with _cache_lock:
        if _cached is None or _cached[0] != key:
            _cached = None  # let the previous model go before the next one loads
            _cached = (key, Embedder.load(model, str(path), prep, device))
        return _cached[1]


def embed(images, model: str | None = None, weights: str | os.PathLike | None = None, preprocess: str = "crop",
          device: str = "auto", batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Embeddings of ``images``: float32 (N, dim), rows of L2 norm 1 (cosine = dot product).

    The DINOv2 class token after the final norm, with the official evaluation transform
    (``preprocess="crop"``: shorter side 256, centre crop 224) or ``"whole"`` (the whole
    image, as ``dinoret index --preprocess whole``): the same Embedder, decoder and
    transform as an index built with the same model, weights and preprocessing.

    ``images``: one image or a list of them; an image is a file path, a PIL image or a
    uint8 array (H×W×3 RGB, H×W×4 RGBA or H×W grey). ``model``: a name from
    ``dinoret.models()`` (default ``dinov2_vits14`` unless ``weights`` names a file that says
    its model); ``weights``: a weights file, else the torch hub cache or the official
    download, as in ``dinoret index``. The last model loaded stays loaded for the next call.

    >>> import numpy as np
    >>> vecs = dinoret.embed(["query.jpg", np.zeros((100, 80, 3), np.uint8)],
    ...                      model="dinov2_vits14", weights="dinov2_vits14_pretrain.pth")
    >>> vecs.shape[0], vecs.dtype, np.allclose(np.linalg.norm(vecs, axis=1), 1)
    (2, dtype('float32'), True)
    """
    return embed_with(_embedder(model, weights, preprocess, device), images, batch_size, progress)


def load_backbone(name_or_file: str | os.PathLike, weights: str | os.PathLike | None = None,
                  device: str = "cpu") -> torch.nn.Module:
    """A DINOv2 backbone as a ``torch.nn.Module`` in eval mode; ``model(x)`` maps a normalised
    image batch [B, 3, H, W] (H, W multiples of 14) to class tokens [B, dim].

    ``name_or_file``: a model name (``dinov2_vits14``, ``dinov2_vitb14_reg``, ... see
    ``dinoret.models()``), whose weights come from ``weights``, the torch hub cache or the
    official download; or a weights file (an official checkpoint, a backbone written by
    ``dinoret train``, a training checkpoint). Never random weights.

    >>> import torch
    >>> backbone = dinoret.load_backbone("dinov2_vitb14_reg")
    >>> backbone.training, backbone(torch.zeros(1, 3, 224, 224)).shape[0]
    (False, 1)
    """
    name, device = os.fspath(name_or_file), resolve_device(device)
    if name in MODELS:
        return _load_backbone(name, weights, device).model
    if weights is not None:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if not Path(name).expanduser().is_file():
        raise UserError(f"{name!r} is neither a model name ({', '.join(MODELS)}) nor a weights file")
    return _load_backbone(None, Path(name).expanduser(), device).model
