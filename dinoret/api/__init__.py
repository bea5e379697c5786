"""The Python API behind ``import dinoret``: each public name of the ``dinoret`` package lives in
one module here and is loaded on first use (see ``dinoret/__init__.py``), so that importing
``dinoret`` or running ``dinoret --help`` loads neither torch nor Faiss.

* ``build``: ``dinoret.index`` (build or update an index, as ``dinoret index``)
* ``handle``: ``dinoret.open`` and :class:`Index` (search, dedup, info, records, vectors)
* ``groups``: :class:`Groups` (dedup results: report files, moving the extra copies aside)
* ``curate``: ``Index.curate_clusters``, ``curate_sample``, ``curate_retrieve`` (``dinoret curate``)
* ``selection``: :class:`Selection` (a curated selection: its file, links or copies, HTML report)
* ``training``: ``dinoret.train`` and ``dinoret.distill`` (``dinoret train``, ``dinoret distill``)
* ``vectors``: :class:`Vectors` (the stored embeddings, memory-mapped)
* ``embedding``: ``dinoret.embed`` and ``dinoret.load_backbone``
* ``inputs``: what counts as an image or a query
* ``catalog_models``: ``dinoret.models`` (the backbones and where their weights come from)
"""
