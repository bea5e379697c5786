"""Decoding files in DataLoader worker processes: path -> preprocessed tensor + facts about the file.

Each file is read once: its bytes are hashed, and decoded only if they are not the bytes
already indexed for that path (a file whose mtime moved but whose content did not comes
back ``unchanged``, undecoded). Failures travel back as items with a ``reason`` instead of
an exception, so one bad file never stops a batch; the collate groups tensors by shape
(``whole`` preprocessing makes images of different shapes) and keeps the failures and the
unchanged files beside them.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dinoret.indexer.decode import SkipFile, open_image, read_file
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
    unchanged: bool = False  # same bytes as the known hash given for it: not decoded
    tensor: torch.Tensor | None = field(default=None, repr=False)


@dataclass
class Batch:
    groups: list[tuple[torch.Tensor, list[FileItem]]]  # one stacked tensor per input shape
    failed: list[FileItem]
    unchanged: list[FileItem] = field(default_factory=list)


def content_hash(data: bytes) -> str:
    """The content hash the index keys files by (BLAKE2b-128 of the bytes)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pixel_hash(img: Image.Image) -> str:
    """Equal for the same decoded picture whatever lossless format stored it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def load_file(path: str, preprocess: Preprocess, known_hash: str | None = None) -> FileItem:
    """Read ``path`` once; decode and preprocess it unless its content hash is ``known_hash``."""
    try:
        # The stat is taken when the file is opened: a change after it shows up as a new mtime next run.
        data, st = read_file(path)
        item = FileItem(path, size=st.st_size, mtime=st.st_mtime, content_hash=content_hash(data))
        if item.content_hash == known_hash:
            item.unchanged = True
            return item
        decoded = open_image(data, draft_size=preprocess.draft_size())
    except SkipFile as e:
        return FileItem(path, reason=e.reason)
    item.pixel_hash = pixel_hash(decoded.image)
    item.width, item.height = decoded.width, decoded.height
    item.tensor = preprocess(decoded.image)
    return item


class FileDataset(Dataset):
    """``known``: path -> content hash already indexed for it (files whose stat changed)."""

    def __init__(self, paths: list[str], preprocess: Preprocess, known: dict[str, str] | None = None) -> None:
        self.paths = paths
        self.preprocess = preprocess
        self.known = known or {}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> FileItem:
        return load_file(self.paths[i], self.preprocess, self.known.get(self.paths[i]))


def collate(items: list[FileItem]) -> Batch:
    by_shape: dict[tuple, list[FileItem]] = defaultdict(list)
    failed, unchanged = [], []
    for it in items:
        if it.reason is not None:
            failed.append(it)
        elif it.unchanged:
            unchanged.append(it)
        else:
            by_shape[tuple(it.tensor.shape)].append(it)
    groups = []
    for members in by_shape.values():
        tensor = torch.stack([m.tensor for m in members])
        for m in members:
            m.tensor = None  # sent once, stacked
        groups.append((tensor, members))
    return Batch(groups, failed, unchanged)


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not fight the model for cores


def file_loader(paths: list[str], preprocess: Preprocess, batch_size: int, workers: int,
                known: dict[str, str] | None = None) -> DataLoader:
    """Batches of decoded, preprocessed files (see :class:`Batch`), decoded in ``workers`` processes."""
    return DataLoader(
        FileDataset(paths, preprocess, known),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        worker_init_fn=_one_thread if workers else None,
    )
