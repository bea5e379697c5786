"""``dinoret.index``: build or update an index, the same run as ``dinoret index``."""
from __future__ import annotations

import os

from dinoret.api.handle import Index
from dinoret.api.inputs import check_arg
from dinoret.api.handle import open as open_index
from dinoret.core.distributed import env_rank
from dinoret.core.errors import UserError
from dinoret.indexer.build import DEFAULT_COMMIT_EVERY, DEFAULT_SHARD_SIZE, BuildOptions, build_index
from dinoret.indexer.layout import default_index_dir

PREPROCESS = ("crop", "whole")
PRECISIONS = ("fp32", "int8")
INDEX_TYPES = ("auto", "flat", "ivfpq")


def index(paths, index: str | os.PathLike | None = None, model: str | None = None,
          weights: str | os.PathLike | None = None, device: str = "auto", batch_size: int = 32,
          workers: int | None = None, preprocess: str | None = None, precision: str | None = None,
          index_type: str = "auto", shard_size: int = DEFAULT_SHARD_SIZE, commit_every: int = DEFAULT_COMMIT_EVERY,
          progress: bool = True) -> Index | None:
    """Embed the images under ``paths`` (a folder or file, or a list of them) into the index
    directory ``index`` (default ``$DINORET_INDEX``, else ``./.dinoret``) and return it opened:
    the run ``dinoret index PATHS`` makes, with its options and defaults.

    The first run creates the index and fixes its ``model`` (default ``dinov2_vits14``),
    ``weights`` (a file, else the torch hub cache or the official download), ``preprocess``
    (``crop``, the official transform, or ``whole``), ``precision`` (``fp32``, or ``int8``: the
    transformer in ONNX Runtime with int8 weights, about 2x faster on a CPU) and
    ``shard_size``. Later runs embed only
    new or changed files and drop files gone from ``paths``; a different model, weights or
    preprocessing is refused. ``index_type``: ``auto`` (exact while small, IVF-PQ past 50,000
    images), ``flat`` or ``ivfpq``. ``workers``: decoding processes (default half the cores,
    at most 8; 0 decodes in this process). Safe to interrupt: run it again to finish.
    What the run did is in the returned handle's ``summary``; the handle is read-only
    (``dinoret.open(index, writable=True)`` stores dedup runs). Under ``torchrun`` every process
    calls it and embeds a share of the files; rank 0 writes the index and gets the handle,
    the other ranks get None.

    >>> idx = dinoret.index("photos", index=".dinoret", weights="dinov2_vits14_pretrain.pth", progress=False)
    >>> idx.summary.indexed + idx.summary.unchanged == len(idx)
    True
    """
    check_arg("preprocess", preprocess, PREPROCESS, optional=True)
    check_arg("precision", precision, PRECISIONS, optional=True)
    check_arg("index_type", index_type, INDEX_TYPES)
    check_arg("batch_size", batch_size, at_least=1)
    check_arg("workers", workers, at_least=0, optional=True)
    check_arg("shard_size", shard_size, at_least=1)
    check_arg("commit_every", commit_every, at_least=1)
    inputs = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not inputs:
        raise UserError("no paths to index")
    index_dir = default_index_dir() if index is None else index
    weights = None if weights is None else os.fspath(weights)
    opts = BuildOptions(model=model, weights=weights, device=device, preprocess=preprocess, precision=precision,
                        batch_size=batch_size, workers=workers, index_type=index_type, shard_size=shard_size,
                        commit_every=commit_every, progress=progress)
    summary = build_index(inputs, index_dir, opts)
    if env_rank() != 0:
        return None  # only rank 0 opens the index directory (it need not exist on other machines)
    idx = open_index(index_dir, device=device, weights=weights)
    idx.summary = summary
    return idx
