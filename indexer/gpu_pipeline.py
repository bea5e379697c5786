"""The GPU input path: JPEG decode, resize and crop on the GPU, file reads prefetched.

On a CUDA machine the CPU decoders cannot feed a ViT-S/14 in bf16 (~12,700 images/s on an
H100); nvjpeg can (~15,000 images/s). This module turns paths into the same ``Batch``es as
``dinoret.indexer.file_dataset`` (tensors grouped by shape, failures with their reasons), so
the embedding loop does not change:

1. a reader thread reads each batch's files (bytes, stat, BLAKE2b content hash, header
   check against decompression bombs) into pinned host memory, ``prefetch`` batches ahead
   of the GPU, so disk reads overlap decoding and the model;
2. JPEGs are decoded in one batched ``torchvision.io.decode_jpeg(..., device=cuda)`` call
   (EXIF orientation applied). If the batch call fails, each file is tried alone; a file
   the GPU decoder refuses (CMYK, arithmetic coding, a truncated stream...) goes to the CPU
   decoder, which is the one that decides whether it is skipped and why, exactly as in a
   CPU run. Other formats (PNG, WebP, ...) take the CPU decoder too;
3. resize (bicubic, antialiased) and the centre crop or ``whole`` rounding of
   ``Preprocess`` run on the GPU, then the ImageNet normalisation.

GPU-decoded JPEGs get no pixel hash (the pixels never come back to the host; the content
hash still finds byte-identical copies). The GPU resize is torch's antialiased bicubic,
not PIL's: features differ from the CPU path's by a cosine of about 1e-3 (tested), so an
index keeps the decode path it was built with in mind when comparing vectors bit for bit.
Everything here also runs with ``device="cpu"``, which is how the tests check the logic on
machines without a GPU.
"""
from __future__ import annotations

import io
import os
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image

from dinoret.indexer.decode import DEFAULT_MAX_PIXELS, sniff_format
from dinoret.indexer.file_dataset import Batch, FileItem, content_hash, load_file
from dinoret.indexer.preprocess import Preprocess

_END = object()


@dataclass
class RawFile:
    """One file read from disk, before decoding."""

    item: FileItem  # path, size, mtime, content hash; ``reason`` set if already refused
    data: torch.Tensor | None = None  # uint8 bytes (pinned on a CUDA machine)
    fmt: str | None = None
    orientation_swaps: bool = False  # EXIF rotation by 90 degrees: width and height swap


def read_file(path: str, pin: bool, max_pixels: int = DEFAULT_MAX_PIXELS) -> RawFile:
    """Bytes and facts of one file; header-only checks (size, bombs); no pixel decoded here."""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return RawFile(FileItem(path, reason=f"unreadable: {e.strerror or e}"))
    item = FileItem(path, size=st.st_size, mtime=st.st_mtime,
                    content_hash=content_hash(data))
    raw = RawFile(item, fmt=sniff_format(data[:16]))
    if not data:
        raw.fmt = None  # the CPU decoder names it ("empty file")
        return raw
    if raw.fmt == "jpeg":
        try:
            with Image.open(io.BytesIO(data)) as im:  # header only: cheap
                w, h = im.size
                swaps = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except Exception:  # the CPU decoder will name the problem
            raw.fmt = None
            return raw
        if w * h > max_pixels:
            item.reason = "decompression bomb"
            return raw
        item.width, item.height = (h, w) if swaps else (w, h)
        raw.orientation_swaps = swaps
    tensor = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    raw.data = tensor.pin_memory() if pin else tensor
    return raw


def prefetch(batches: Iterable, depth: int = 2) -> Iterator:
    """Iterate ``batches`` produced by a background thread, up to ``depth`` ahead; an
    exception in the producer is raised in the consumer."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def produce() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(_END)
        except BaseException as e:  # handed to the consumer
            q.put(e)

    t = threading.Thread(target=produce, name="dinoret-prefetch", daemon=True)
    t.start()
    try:
        while True:
            b = q.get()
            if b is _END:
                return
            if isinstance(b, BaseException):
                raise b
            yield b
    finally:
        stop.set()


def _decode_jpegs(raws: list[RawFile], device: torch.device, decoder: Callable) -> list[torch.Tensor | None]:
    """Decoded [3, H, W] uint8 tensors on ``device`` (None where the decoder refused the file)."""
    from torchvision.io import ImageReadMode

    data = [r.data for r in raws]
    try:
        return list(decoder(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
    except Exception:
        pass  # one bad file fails the whole batch call: try them one by one
    out: list[torch.Tensor | None] = []
    for d in data:
        try:
            out.append(decoder([d], mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)[0])
        except Exception:
            out.append(None)
    return out


def resize_on_device(img: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """``Preprocess`` on a decoded uint8 [3, H, W] tensor: resize, crop, normalise (float32)."""
    _, h, w = img.shape
    x = img.unsqueeze(0).float()
    if pre.mode == "whole":
        ow, oh = pre.output_size(w, h)
        x = F.interpolate(x, size=(oh, ow), mode="bicubic", antialias=True, align_corners=False)
    else:
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(pre.resize * long / short)
        nw, nh = (pre.resize, new_long) if w <= h else (new_long, pre.resize)
        if (nw, nh) != (w, h):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        left, top = int(round((nw - pre.crop) / 2.0)), int(round((nh - pre.crop) / 2.0))
        x = x[:, :, top : top + pre.crop, left : left + pre.crop]
    x = x.clamp_(0, 255).div_(255.0)[0]
    mean = torch.tensor(pre.mean, device=x.device).view(3, 1, 1)
    std = torch.tensor(pre.std, device=x.device).view(3, 1, 1)
    return (x - mean) / std


def _default_decoder():
    import warnings

    from torchvision.io import decode_jpeg

    def decode(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 points at TorchCodec
            return decode_jpeg(*args, **kwargs)

    return decode


def gpu_batches(paths: list[str], preprocess: Preprocess, batch_size: int, device: str | torch.device = "cuda",
                prefetch_batches: int = 2, decoder: Callable | None = None) -> Iterator[Batch]:
    """``Batch``es of ``paths`` (same contract as ``file_loader``), decoded and resized on ``device``."""
    device = torch.device(device)
    decoder = decoder or _default_decoder()
    pin = device.type == "cuda"

    def read_batches() -> Iterator[list[RawFile]]:
        for s in range(0, len(paths), batch_size):
            yield [read_file(p, pin) for p in paths[s : s + batch_size]]

    for raws in prefetch(read_batches(), prefetch_batches):
        by_shape: dict[tuple, list[tuple[torch.Tensor, FileItem]]] = defaultdict(list)
        failed: list[FileItem] = []
        jpegs = [r for r in raws if r.item.reason is None and r.fmt == "jpeg"]
        decoded = dict(zip(map(id, jpegs), _decode_jpegs(jpegs, device, decoder))) if jpegs else {}
        for r in raws:
            if r.item.reason is not None:
                failed.append(r.item)
                continue
            img = decoded.get(id(r))
            if img is None:  # not a JPEG, or refused by the GPU decoder: the CPU path decides
                item = load_file(r.item.path, preprocess)
                if item.reason is not None:
                    failed.append(item)
                    continue
                tensor, item.tensor = item.tensor.to(device, non_blocking=True), None
            else:
                item = r.item
                if (img.shape[2], img.shape[1]) != (item.width, item.height):
                    item.width, item.height = img.shape[2], img.shape[1]
                tensor = resize_on_device(img, preprocess)
            by_shape[tuple(tensor.shape)].append((tensor, item))
        groups = [(torch.stack([t for t, _ in members]), [it for _, it in members]) for members in by_shape.values()]
        yield Batch(groups, failed)
