"""dinoret: image search and dataset hygiene on DINOv2 backbones.

The Python API (the CLI's commands, as calls)::

    import dinoret
    idx = dinoret.index("./photos", index="./.dinoret", model="dinov2_vits14")  # dinoret index
    idx = dinoret.open("./.dinoret")                      # an existing index, read-only unless asked
    hits = idx.search("query.jpg", k=10)                  # dinoret query: [Hit(rank, id, path, score)]
    groups = idx.dedup(threshold=0.95)                    # dinoret dedup: Groups of Group/Member
    groups.to_html("dups.html")                           # dinoret dedup --report dups.html
    idx.curate_clusters([1000, 100])                      # dinoret curate clusters (writable=True)
    pick = idx.curate_sample(5000, exclude="./test_set")  # dinoret curate sample: a Selection
    pick.write("train.txt")                               # ... --out train.txt
    dinoret.train("train.txt", output="runs/s14", config="configs/vits14.yaml")   # dinoret train
    dinoret.distill("./photos", output="runs/s", teacher="runs/s14")              # dinoret distill
    vecs = dinoret.embed(["a.jpg", "b.jpg"], model="dinov2_vits14")   # float32 (N, dim), L2-normalised
    backbone = dinoret.load_backbone("dinov2_vitb14_reg") # torch.nn.Module, eval mode

Every error the library reports is a :class:`dinoret.Error`. The names load on first use,
so ``import dinoret`` itself imports neither torch nor Faiss.
"""

__version__ = "0.1.0"

# public name -> (module, attribute): loaded on first access (PEP 562)
_EXPORTS = {
    "open": ("dinoret.api.handle", "open"),
    "index": ("dinoret.api.build", "index"),
    "embed": ("dinoret.api.embedding", "embed"),
    "load_backbone": ("dinoret.api.embedding", "load_backbone"),
    "models": ("dinoret.api.catalog_models", "models"),
    "undo_moves": ("dinoret.api.groups", "undo_moves"),
    "train": ("dinoret.api.training", "train"),
    "distill": ("dinoret.api.training", "distill"),
    "Selection": ("dinoret.api.selection", "Selection"),
    "Index": ("dinoret.api.handle", "Index"),
    "Groups": ("dinoret.api.groups", "Groups"),
    "Vectors": ("dinoret.api.vectors", "Vectors"),
    "Hit": ("dinoret.retrieval.index", "Hit"),
    "Group": ("dinoret.retrieval.dedup_result", "Group"),
    "Member": ("dinoret.retrieval.dedup_result", "Member"),
    "Record": ("dinoret.indexer.meta", "Record"),
    "Error": ("dinoret.core.errors", "UserError"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dinoret' has no attribute {name!r}")
    import importlib

    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
