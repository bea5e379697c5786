"""The embedder of an existing index, checked against its catalog: the one place that loads it.

An index's vectors came from one model, weights file (by sha256) and preprocessing, all
recorded in its catalog (``index_info``). Whoever embeds more images for that index (an
index run, a query, ``dedup --against`` a folder, the web UI) must embed exactly
the same way, so they all load the embedder here.

Cheap checks come first and nothing is loaded before it is needed: a model or
preprocessing other than the recorded one is refused by name; the weights file is
hashed only if its size or mtime differ from those recorded with its sha256
(``index_weights``), and the model is built only by :func:`load_index_embedder`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from dinoret.core.errors import IndexUnavailable, NotFound, UserError
from dinoret.core.files import file_sha256
from dinoret.indexer.catalog import IndexInfo, read_info, record_sha256, recorded_sha256
from dinoret.indexer.identity import identity_mismatch

if TYPE_CHECKING:  # torch is imported only when an embedder is made: a run with nothing to embed never needs it
    import torch

    from dinoret.indexer.embed import Embedder
    from dinoret.indexer.preprocess import Preprocess


def catalog_info(catalog: Engine) -> IndexInfo:
    """The catalog's ``index_info`` row; :class:`IndexUnavailable` if the index was never started."""
    info = read_info(catalog)
    if info is None:
        where = Path(catalog.url.database or "?").parent
        raise IndexUnavailable(f"the index at {where} was never completed: run `dinoret index` on it again")
    return info


def check_requested(identity: dict, model: str | None = None, preprocess: str | None = None,
                    precision: str | None = None) -> None:
    """Refuse a model, preprocessing mode or precision other than the index's (by name: nothing is loaded)."""
    if model and model != identity["model"]:
        raise UserError(
            f"the index was built with {identity['model']}, not {model}: vectors of two models cannot be mixed; "
            f"use another index directory (or delete this one)", param=("model", "index_dir"))
    recorded = identity["preprocess"]["mode"]
    if preprocess and preprocess != recorded:
        raise UserError(
            f"the index was built with preprocessing {recorded!r}, not {preprocess!r}; "
            f"use another index directory (or delete this one)", param=("preprocess", "index_dir"))
    recorded_precision = index_precision(identity)
    if precision and precision != recorded_precision:
        raise UserError(
            f"the index was built at precision {recorded_precision}, not {precision}: vectors of two precisions "
            f"cannot be mixed; use another index directory (or delete this one)", param=("precision", "index_dir"))


def index_precision(identity: dict) -> str:
    """The precision the index's images were embedded at (indexes made before int8 existed are fp32)."""
    return identity.get("precision", "fp32")


def index_preprocess(identity: dict) -> Preprocess:
    """The preprocessing the index's images were embedded with."""
    from dinoret.indexer.preprocess import Preprocess

    return Preprocess.from_dict(identity["preprocess"])


def check_weights(catalog: Engine, weights: str | os.PathLike | None = None) -> tuple[Path, str]:
    """(path, sha256) of the weights file for this index: ``weights``, else the file recorded
    when the index was made. Raises unless its sha256 is the index's; hashes the file only
    when its size or mtime differ from those recorded with its sha256."""
    info = catalog_info(catalog)
    identity = info.identity
    path = Path(weights or info.weights_path).expanduser().absolute()
    try:
        st = path.stat()
    except OSError:
        raise NotFound(
            f"the weights this index was built with are not at {path}: give the {identity['model']} file "
            f"with sha256 {identity['weights_sha256'][:12]}…", param="weights") from None
    sha = recorded_sha256(catalog, str(path), st)
    if sha is None:
        sha = file_sha256(path)
        if sha == identity["weights_sha256"]:
            record_sha256(catalog, str(path), st, sha)
    if sha != identity["weights_sha256"]:
        raise UserError(
            f"{path} does not match the index: it was built with {identity['model']} weights sha256 "
            f"{identity['weights_sha256'][:12]}…, this file has sha256 {sha[:12]}…", param="weights")
    return path, sha


def remember_weights(catalog: Engine, path: str | os.PathLike, sha256: str) -> None:
    """Record the sha256 of a weights file just hashed (a new index), so later runs skip hashing it."""
    try:
        st = Path(path).stat()
    except OSError:
        return
    record_sha256(catalog, str(Path(path).absolute()), st, sha256)


def load_index_embedder(catalog: Engine, weights: str | os.PathLike | None = None,
                        device: str | torch.device = "auto") -> Embedder:
    """The index's embedder: its model, weights (``weights`` if the recorded file moved; sha256
    checked) and preprocessing, on ``device``. ``catalog``: the index's catalog engine
    (``IndexReader.engine``, or ``open_catalog(IndexPaths.of(dir).catalog)``)."""
    from dinoret.indexer.embed import Embedder

    identity = catalog_info(catalog).identity
    path, sha = check_weights(catalog, weights)
    emb = Embedder.load(None, str(path), index_preprocess(identity), device, sha256=sha,
                        precision=index_precision(identity))
    problem = identity_mismatch(identity, emb.identity())
    if problem:
        raise UserError(f"{path} does not match the index: {problem}", param="weights")
    return emb
