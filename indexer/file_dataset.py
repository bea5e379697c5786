"""Decoding files in DataLoader worker processes: path -> preprocessed tensor + facts about the file.

Failures travel back as items with a ``reason`` instead of an exception, so one bad
file never stops a batch; the collate groups tensors by shape (``whole`` preprocessing
makes images of different shapes) and keeps the failures beside them.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dinoret.indexer.decode import SkipFile, open_image
from dinoret.indexer.preprocess import Preprocess


@dataclass
class FileItem:
    path: str
    size: int = 0
    mtime: float = 0.0
    content_hash: str = ""
    pixel_hash: str | None = None
    width: int = 0
    height: int = 0
    reason: str | None = None  # why the file is skipped; None when it decoded
    tensor: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class Batch:
    groups: list[tuple[torch.Tensor, list[FileItem]]]  # one stacked tensor per input shape
    failed: list[FileItem]


def content_hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pixel_hash(img: Image.Image) -> str:
    """Equal for the same decoded picture whatever lossless format stored it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_file(path: str, preprocess: Preprocess) -> FileItem:
    try:
        st = os.stat(path)  # before reading: a later change shows up as a new mtime next run
        item = FileItem(path, size=st.st_size, mtime=st.st_mtime)
        decoded = open_image(path, draft_size=preprocess.draft_size())
        item.content_hash = content_hash(path)
    except SkipFile as e:
        return FileItem(path, reason=e.reason)
    except OSError as e:  # vanished or became unreadable between the walk and now
        return FileItem(path, reason=f"unreadable: {e.strerror or e}")
    item.pixel_hash = pixel_hash(decoded.image)
    item.width, item.height = decoded.width, decoded.height
    item.tensor = preprocess(decoded.image)
    return item


class FileDataset(Dataset):
    def __init__(self, paths: list[str], preprocess: Preprocess) -> None:
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> FileItem:
        return load_file(self.paths[i], self.preprocess)


def collate(items: list[FileItem]) -> Batch:
    by_shape: dict[tuple, list[FileItem]] = defaultdict(list)
    failed = []
    for it in items:
        if it.reason is None:
            by_shape[tuple(it.tensor.shape)].append(it)
        else:
            failed.append(it)
    groups = []
    for members in by_shape.values():
        tensor = torch.stack([m.tensor for m in members])
        for m in members:
            m.tensor = None  # sent once, stacked
        groups.append((tensor, members))
    return Batch(groups, failed)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the model for cores


def file_loader(paths: list[str], preprocess: Preprocess, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        FileDataset(paths, preprocess),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_one_thread if workers else None,
    )
