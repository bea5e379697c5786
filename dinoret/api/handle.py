"""``dinoret.open`` and :class:`Index`: one index directory, searched, deduplicated and read
exactly as the ``dinoret query``, ``dedup`` and ``info`` commands do (they call it).

Opening an index and reading it (``dinoret info``) needs neither torch nor Faiss: the model
(torch) is loaded at the first image to embed, the Faiss shards at the first search, and
the dedup machinery at the first :meth:`Index.dedup`."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dinoret.api.inputs import check_vector, is_id, is_vector, read_image_file, split_queries
from dinoret.api.vectors import Vectors
from dinoret.core.errors import NotFound, UserError
from dinoret.indexer.layout import default_index_dir
from dinoret.indexer.meta import Record
from dinoret.retrieval.index import Hit, IndexReader, open_index
from dinoret.retrieval.knn_graph import METHODS

if TYPE_CHECKING:
    from dinoret.api.groups import Groups
    from dinoret.api.selection import Selection



class Index:
    """An index directory (made by ``dinoret index`` or :func:`dinoret.index`), opened by
    :func:`dinoret.open`: search it, find its duplicates, read its records and vectors.

    Read-only unless opened with ``writable=True``: then, as the CLI does, every
    :meth:`dedup` run is stored in the index (``dinoret dedup --list``, the web UI) and
    :meth:`review` records a reviewer's verdict. One handle may serve many threads.

    >>> idx = dinoret.open(".dinoret")
    >>> len(idx) > 0, idx.model, idx.dim == idx.info()["dim"]
    (True, 'dinov2_vits14', True)
    >>> with dinoret.open(".dinoret") as idx:
    ...     hits = idx.search("query.jpg", k=2)
    >>> len(hits)
    2
    """

    def __init__(self, reader: IndexReader, writable: bool = False, device: str = "auto",
                 weights: str | os.PathLike | None = None) -> None:
        self._reader = reader
        self._writable = False
        self.writable = writable
        self._device = device
        self._weights = None if weights is None else os.fspath(weights)
        self._embedder = None
        self._lock = threading.Lock()
        #: What the :func:`dinoret.index` run that returned this handle did (a
        #: ``dinoret.indexer.build.RunSummary``: indexed, unchanged, removed, skipped, ...); None otherwise.
        self.summary = None

    # --- what it is -----------------------------------------------------------
    @property
    def writable(self) -> bool:
        """Whether :meth:`dedup` runs are stored in the index and :meth:`review` may record
        verdicts (``dinoret.open(..., writable=True)``; may be set later). Refused for an index
        that is :attr:`read_only`.

        >>> idx = dinoret.open(".dinoret")
        >>> idx.writable = True
        >>> idx.writable
        True
        """
        return self._writable

    @writable.setter
    def writable(self, value: bool) -> None:
        if value and self.read_only:
            raise UserError(f"the index at {self.root} is read-only (read-only media or folder): dedup reports, "
                            "reviews and clusterings cannot be stored in it", param="index_dir")
        self._writable = bool(value)

    @property
    def read_only(self) -> bool:
        """True when the index's files cannot be written (read-only media or folder): search,
        read and dedup still work, storing reports does not."""
        return self._reader.read_only

    @property
    def reader(self) -> IndexReader:
        """The :class:`dinoret.retrieval.index.IndexReader` this handle reads through (records,
        vectors, the catalog), for code built on dinoret's own modules."""
        return self._reader

    @property
    def root(self) -> Path:
        """The index directory."""
        return Path(self._reader.root)

    @property
    def model(self) -> str:
        """The backbone name the index was built with."""
        return self._reader.identity["model"]

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self._reader.identity["dim"])

    @property
    def identity(self) -> dict:
        """What queries must match: model, weights sha256, dim, backbone config, preprocessing."""
        return dict(self._reader.identity)

    @property
    def device(self) -> str:
        """Where image queries and other images are embedded (``auto``, ``cpu``, ``cuda``), as opened."""
        return self._device

    @property
    def weights(self) -> str:
        """The weights file queries are embedded with (the one recorded, unless ``weights=`` was given)."""
        return self._weights or self._reader.weights_path

    def __len__(self) -> int:
        return len(self._reader)

    def __repr__(self) -> str:
        mode = "writable" if self.writable else "read-only"
        return f"<dinoret.Index {self.root}: {len(self)} images, {self.model} dim {self.dim}, {mode}>"

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the index's files now (also done when the handle is garbage-collected, or at
        the end of a ``with`` block).

        >>> idx = dinoret.open(".dinoret")
        >>> idx.close()
        """
        self._reader.close()

    def load(self, model: bool = False, shards: bool = True) -> None:
        """Read the Faiss shards now rather than at the first search (``shards``); with
        ``model=True`` also load (and check against the index) the model that embeds image
        queries, so that missing weights are found now. Servers warm up so.

        >>> dinoret.open(".dinoret").load(model=True)
        """
        if shards:
            self._reader.load()
        if model:
            self._query_embedder()

    def info(self) -> dict:
        """What ``dinoret info --json`` prints: model, dim, images, shards, index_type,
        index_params, disk_bytes, last_run, skipped (a count: :meth:`skipped` lists them).

        >>> info = dinoret.open(".dinoret").info()
        >>> info["images"] == len(dinoret.open(".dinoret")), info["index_type"]
        (True, 'flat')
        """
        return self._reader.stats()

    def skipped(self) -> list[tuple[str, str]]:
        """(path, reason) of every file the indexing skipped, as ``dinoret info --skipped``.

        >>> dinoret.open(".dinoret").skipped()
        []
        """
        return self._reader.skipped()

    def indexed_roots(self) -> list[str]:
        """The folders (and files) the ``dinoret index`` runs of this index were given.

        >>> import os
        >>> [os.path.basename(p) for p in dinoret.open(".dinoret").indexed_roots()]
        ['photos']
        """
        return self._reader.indexed_roots()

    def check_move_to(self, dest: str | os.PathLike) -> None:
        """Refuse (:class:`dinoret.Error`) a folder inside the indexed folders (symlinks resolved)
        as a place to move duplicates to: the next ``dinoret index`` would index the moved
        files again, and the next dedup would move them again. :meth:`Groups.move_to` checks
        it (unless ``allow_inside=True``); call it to check before a long dedup run.

        >>> dinoret.open(".dinoret").check_move_to("dups")
        >>> dinoret.open(".dinoret").check_move_to("photos/dups")
        Traceback (most recent call last):
        dinoret.core.errors.UserError: the move target photos/dups is inside the indexed folder ...
        """
        from dinoret.retrieval.moves import enclosing_root

        root = enclosing_root(dest, self.indexed_roots())
        if root is not None:
            raise UserError(f"the move target {os.fspath(dest)} is inside the indexed folder {root}: the next "
                            "`dinoret index` would index the moved files again; choose a folder outside it",
                            param=("move_to", "allow_inside"))

    def shard_sizes(self) -> list[tuple[int, int]]:
        """(shard number, vectors in its file) per Faiss shard.

        >>> [n for _, n in dinoret.open(".dinoret").shard_sizes()] == [len(dinoret.open(".dinoret"))]
        True
        """
        return self._reader.shard_sizes()

    # --- records and vectors --------------------------------------------------
    def record(self, id: int) -> Record:
        """The record of indexed image ``id``: path, size, mtime, content and pixel hashes,
        width, height, shard. :class:`dinoret.Error` if there is none.

        >>> idx = dinoret.open(".dinoret")
        >>> hit = idx.search("query.jpg", k=1)[0]
        >>> idx.record(hit.id).path == hit.path
        True
        """
        rec = self._reader.record(int(id)) if is_id(id) else None
        if rec is None:
            raise NotFound(f"no image with id {id} in the index {self.root}")
        return rec

    def ids(self) -> np.ndarray:
        """The ids of every indexed image, ascending (int64).

        >>> idx = dinoret.open(".dinoret")
        >>> len(idx.ids()) == len(idx)
        True
        """
        return self._reader.ids()

    def vectors(self) -> Vectors:
        """The stored embeddings, as a lazy (N, dim) array over the memory-mapped ``vectors/``
        files (rows read when indexed, see :class:`dinoret.Vectors`).

        >>> vecs = dinoret.open(".dinoret").vectors()
        >>> vecs[:3].shape[0]
        3
        """
        return Vectors(self._reader)

    # --- search ----------------------------------------------------------------
    def _query_embedder(self):
        with self._lock:
            if self._embedder is None:
                self._embedder = self._reader.embedder(device=self._device, weights=self._weights)
            return self._embedder

    def read_image(self, path: str | os.PathLike) -> Image.Image:
        """The image file decoded exactly as this index's files were (EXIF orientation, RGB, the
        same reduced JPEG decoding): what :meth:`search` and :meth:`embed` make of a path.
        An unreadable file raises :class:`dinoret.Error` with ``path`` and a short ``reason``.

        >>> idx = dinoret.open(".dinoret")
        >>> idx.read_image("query.jpg").mode
        'RGB'
        >>> try:
        ...     idx.read_image("photos")
        ... except dinoret.Error as e:
        ...     print(e.reason)
        a folder, not an image file
        """
        return read_image_file(path, self._query_embedder().preprocess.draft_size())

    def embed(self, images, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Embed images exactly as this index's images were embedded (same model, weights,
        preprocessing, decoder): float32 (N, dim), L2-normalised. ``images``: one image or a
        list of file paths, PIL images or uint8 arrays.

        >>> idx = dinoret.open(".dinoret")
        >>> idx.embed("query.jpg").shape == (1, idx.dim)
        True
        """
        from dinoret.api.embedding import embed_with  # torch: only when something is embedded

        return embed_with(self._query_embedder(), images, batch_size, progress)

    def search(self, query, k: int = 10, rerank: bool = True) -> list[Hit] | list[list[Hit]]:
        """The ``k`` indexed images most similar to ``query`` (cosine), best first, as
        :class:`dinoret.Hit` (``rank``, ``id``, ``path``, ``score``): ``dinoret query``'s results.

        ``query``: an image file path, a PIL image, a uint8 image array (embedded exactly as
        the collection was); an indexed id (its stored vector; the image itself is left
        out, as in the web UI); or an embedding (a float array of the index's dim). A list
        of them (or a float (N, dim) array) gives one list of hits per query. ``rerank``:
        re-score IVF-PQ candidates with exact cosine (``--rerank/--no-rerank``).

        >>> idx = dinoret.open(".dinoret")
        >>> hits = idx.search("query.jpg", k=3)
        >>> [h.rank for h in hits], hits[0].score >= hits[-1].score
        ([1, 2, 3], True)
        >>> [h.id for h in idx.search(hits[0].id, k=3)].count(hits[0].id)
        0
        >>> len(idx.search(["query.jpg", idx.vectors()[0]], k=2))
        2
        """
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise UserError(f"k must be a whole number of at least 1, not {k!r}")
        items, single = split_queries(query, self.dim)
        vecs = np.empty((len(items), self.dim), dtype=np.float32)
        leave_out: list[int | None] = [None] * len(items)
        images = [i for i, q in enumerate(items) if not is_id(q) and not is_vector(q)]
        if images:
            vecs[images] = self.embed([items[i] for i in images])
        for i, q in enumerate(items):
            if is_id(q):
                leave_out[i] = self.record(q).id
            elif is_vector(q):
                vecs[i] = check_vector(q, self.dim)
        by_id = [i for i, left in enumerate(leave_out) if left is not None]
        if by_id:
            vecs[by_id] = self._reader.vectors([leave_out[i] for i in by_id])
        out: list[list[Hit]] = [[] for _ in items]
        # Queries by id ask for one more, since their own image (the best match) is left out.
        for rows, extra in (([i for i in range(len(items)) if leave_out[i] is None], 0), (by_id, 1)):
            if rows:
                scores, ids = self._reader.search(vecs[rows], k=k + extra, rerank=rerank)
                for row, hits in zip(rows, self._reader.hits(scores, ids, k=k, leave_out=[leave_out[r] for r in rows])):
                    out[row] = hits
        return out[0] if single else out

    # --- duplicates ------------------------------------------------------------
    def _against(self, against, param: str = "against") -> tuple[object, str | None]:
        from dinoret.retrieval.dedup import against_source

        if against is None:
            return None, None
        if isinstance(against, Index):
            return against._reader, f"index:{against.root.resolve()}"
        return against_source(against, param)

    def dedup(self, threshold: float | None = None, k: int | None = None, keep: str = "largest",
              against=None, split: bool = True, method: str = "auto", progress: bool = True) -> Groups:
        """Exact and near-duplicate groups, found as ``dinoret dedup`` finds them (same options,
        same defaults): exact copies by content or pixel hash, near ones by cosine >= ``threshold``
        (default 0.95) between stored vectors (a ``k``-nearest-neighbour graph, default 10), one keeper a group by ``keep``
        (``largest``, ``oldest``, ``first``), chained groups split into stars unless
        ``split=False``; groups reviewers marked *not duplicates* left out.

        ``against``: a folder of images, another index directory or :class:`Index`: the index
        images that duplicate *that* set instead (one group per matched item, the item as the
        keeper). ``method``: ``auto``, ``exact``, ``ivfpq`` or ``faiss`` kNN. On a ``writable``
        handle the result is stored in the index, as the CLI stores it (``Groups.id``).

        >>> groups = dinoret.open(".dinoret").dedup(threshold=0.9, k=5, keep="oldest", progress=False)
        >>> groups.params["keep"], groups.id is None
        ('oldest', True)
        """
        from dinoret.api.groups import Groups
        from dinoret.retrieval.dedup import DEFAULT_K, DEFAULT_THRESHOLD, find_duplicates
        from dinoret.retrieval.reports import save_report

        if method not in METHODS:
            raise UserError(f"method must be one of {', '.join(METHODS)}, not {method!r}", param="method")
        source, label = self._against(against)
        result = find_duplicates(
            self._reader, threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            k=DEFAULT_K if k is None else k, keep=keep,
            against=source, against_label=label, split=split, device=self._device, method=method,
            weights=self._weights, progress=progress,
        )
        if self.writable:
            return self.report(save_report(self._reader.engine, result))
        return Groups(result.to_dict(), self)

    def reports(self) -> list[dict]:
        """The dedup reports stored in the index, newest first (``dinoret dedup --list``): id,
        created, threshold, against, n_groups, n_images, files, params.

        >>> isinstance(dinoret.open(".dinoret").reports(), list)
        True
        """
        from dinoret.retrieval.reports import list_reports

        return list_reports(self._reader.engine)

    def report(self, report_id: int) -> Groups:
        """Stored report ``report_id`` as :class:`Groups`, with the reviews made since applied
        (``dinoret dedup --from-report N``).

        >>> idx = dinoret.open(".dinoret", writable=True)
        >>> stored = idx.dedup(threshold=0.95, progress=False)
        >>> len(idx.report(stored.id)) == len(stored)
        True
        """
        from dinoret.api.groups import Groups
        from dinoret.retrieval.reports import load_report

        return Groups(load_report(self._reader.engine, int(report_id)), self)

    def review(self, member_ids, not_duplicates: bool | None = None, keeper: int | None = None) -> None:
        """Record a reviewer's verdict on the group with these member ids, as the web UI does:
        ``not_duplicates=True`` (False clears it) keeps the group out of later dedup runs while
        its members stay the same; ``keeper`` makes that member the group's keeper now and in
        later runs. Needs a ``writable`` handle.

        >>> idx = dinoret.open(".dinoret", writable=True)
        >>> a, b = idx.ids()[:2]
        >>> idx.review([a, b], not_duplicates=True); idx.review([a, b], not_duplicates=False)
        """
        from dinoret.retrieval.reports import set_group_verdict, set_keeper

        if self.read_only:
            raise UserError(f"the index at {self.root} is read-only (read-only media or folder): reviews cannot "
                            "be stored in it")
        if not self.writable:
            raise UserError(f"the index {self.root} is open read-only: dinoret.open(..., writable=True) to review")
        ids = [int(i) for i in member_ids]
        if not_duplicates is not None:
            set_group_verdict(self._reader.engine, ids, "not_duplicates" if not_duplicates else None)
        if keeper is not None:
            set_keeper(self._reader.engine, ids, int(keeper))

    # --- curation ------------------------------------------------------------------
    def curate_clusters(self, clusters=None, resample=0, resample_points: int = 10,
                        resample_strategy: str = "closest", iters: int = 10, seed: int = 0, recluster: bool = False,
                        progress: bool = True) -> dict | None:
        """Hierarchical k-means over the index's stored vectors, saved in the index, as
        ``dinoret curate clusters`` runs it (the same options and defaults). Needs a ``writable``
        handle.

        ``clusters``: clusters per level, finest first (``[10000, 1000, 100]`` or
        ``"10000,1000,100"``). ``resample``: resampling steps, one value or one per level;
        ``resample_points`` vectors per cluster (``closest`` to its centroid or ``random``) go
        into each. ``iters`` Lloyd iterations per k-means; the same ``seed`` gives the same
        clusters. With a clustering already saved: without ``clusters`` (or with the same
        levels) it is brought up to date (newly indexed images join their nearest leaf,
        removed ones are dropped); ``recluster=True`` makes a new one. Under ``torchrun``
        every process calls it and shares the work; rank 0 saves.

        Returns (None on ranks other than 0) ``action`` (``clustered``, ``updated`` or
        ``up to date``), ``images``, ``levels``, ``sizes`` (images per cluster, per level),
        ``added``, ``removed``, ``seconds``, ``processes`` and ``notes``.

        >>> idx = dinoret.open(".dinoret", writable=True)
        >>> done = idx.curate_clusters([4, 2], recluster=True, progress=False)
        >>> done["action"], done["levels"], int(done["sizes"][0].sum()) == len(idx)
        ('clustered', [4, 2], True)
        >>> idx.curate_clusters(progress=False)["action"]
        'up to date'
        """
        from dinoret.api import curate

        return curate.clusters(self, clusters, resample, resample_points, resample_strategy, iters, seed, recluster,
                               progress)

    def curate_sample(self, target: int, strategy: str = "random", seed: int = 0, exclude=None,
                      exclude_threshold: float | None = None, progress: bool = True) -> Selection:
        """Exactly ``target`` images balanced over the index's clustering (made by
        :meth:`curate_clusters`), as ``dinoret curate sample`` picks them: the target is split
        over the top-level clusters with a cap, then over their children down to the leaves,
        where ``random`` images (fixed per image id and ``seed``) or those ``closest`` to the
        centroid are taken. ``exclude``: an evaluation set (a folder of images, an index
        directory or :class:`Index`): every pool image whose duplicate component touches it
        (cosine >= ``exclude_threshold``, default 0.90, or an exact copy) is left out.

        >>> idx = dinoret.open(".dinoret", writable=True)
        >>> _ = idx.curate_clusters([4, 2], recluster=True, progress=False)
        >>> pick = idx.curate_sample(4, exclude="test_set", exclude_threshold=0.998, progress=False)
        >>> len(pick), len(set(pick.paths)), len(pick.excluded) > 0
        (4, 4, True)
        """
        from dinoret.api import curate

        return curate.sample(self, target, strategy, seed, exclude, exclude_threshold, progress)

    def curate_retrieve(self, seeds, mode: str = "sample", k: int = 4, min_hits: int = 3, per_cluster: int = 10_000,
                        level: int = 1, strategy: str = "random", seed: int = 0, exclude=None,
                        exclude_threshold: float | None = None, progress: bool = True) -> Selection:
        """The index images close to a curated seed set, as ``dinoret curate retrieve`` finds
        them. ``seeds``: a folder of images (embedded as this index's images were) or an index
        of the same model (a directory or :class:`Index`). ``mode="sample"``: the ``k`` nearest
        pool images of every seed; ``"cluster"``: every cluster (at ``level``) holding at least
        ``min_hits`` seeds gives up to ``per_cluster`` of its images (``random`` or ``closest``
        to its seeds; needs :meth:`curate_clusters` first). ``exclude`` as in :meth:`curate_sample`.

        >>> pick = dinoret.open(".dinoret").curate_retrieve("test_set", k=2, progress=False)
        >>> pick[0].reason, pick.params["mode"], len(pick) <= 2 * pick.params["seeds"]
        ('sample-retrieval', 'sample', True)
        """
        from dinoret.api import curate

        return curate.retrieve(self, seeds, mode, k, min_hits, per_cluster, level, strategy, seed, exclude,
                               exclude_threshold, progress)


def open(index_dir: str | os.PathLike | None = None, writable: bool = False, device: str = "auto",
         weights: str | os.PathLike | None = None) -> Index:
    """Open an existing index directory (default ``$DINORET_INDEX``, else ``./.dinoret``).

    ``writable=True`` lets :meth:`Index.dedup` store its reports and :meth:`Index.review`
    record verdicts. ``device`` (``auto``, ``cpu``, ``cuda``) and ``weights`` (the index's
    weights file, when it moved: its sha256 is checked) are what image queries and
    ``dedup(against=folder)`` embed with, as ``--device`` / ``--weights`` of the CLI.

    >>> idx = dinoret.open(".dinoret")
    >>> idx.writable
    False
    """
    return Index(open_index(default_index_dir() if index_dir is None else index_dir), writable, device, weights)
