"""The Python API's documentation runs: the README's Python section and every docstring example.

Both run in one scratch folder (the current directory while they run) that holds what the
examples name, so the README says exactly what a user types:

* ``photos/``: the dedup test collection (copies, near copies, unrelated photos);
* ``query.jpg``: a smaller copy of ``photos/a.jpg``; ``test_set/``: a few images, two of
  them copies of photos;
* ``dinov2_vits14_pretrain.pth``: a tiny random ViT (dim 64, depth 2) saved as a dinoret
  backbone file under the official file name and model name, standing in for the real
  checkpoint; the same kind of stand-in for ``dinov2_vitb14_reg`` in the torch hub cache,
  where ``load_backbone`` looks first;
* ``.dinoret``: the index of ``photos/`` built with that stand-in;
* ``configs/tiny.yaml``, ``configs/distill_tiny.yaml``: the smoke-run training configs.
"""
from __future__ import annotations

import doctest
import inspect
import re
import shutil
from pathlib import Path

import pytest
import torch

import dinoret
from tests.conftest import REPO
from tests.test_dedup import make_collection, make_other_set

TINY = dict(embed_dim=64, depth=2, num_heads=2)


def _stand_in(path: Path, name: str, seed: int) -> Path:
    from dinoret.core.models import build_model
    from dinoret.core.weights import save_backbone

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_backbone(path, build_model(name, **TINY), name=name)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    from dinoret.core.weights import official_filename

    root = tmp_path_factory.mktemp("python_docs")
    photos = make_collection(root / "photos")
    from PIL import Image

    Image.open(photos / "a.jpg").resize((200, 150)).save(root / "query.jpg", quality=80)
    make_other_set(root / "test_set", photos)
    (root / "configs").mkdir()
    for name in ("tiny.yaml", "distill_tiny.yaml"):
        shutil.copy(REPO / "configs" / name, root / "configs" / name)
    _stand_in(root / "dinov2_vits14_pretrain.pth", "dinov2_vits14", 0)
    # conftest points the torch hub at <basetemp>/torch_home/hub for every test.
    hub = tmp_path_factory.getbasetemp() / "torch_home" / "hub" / "checkpoints"
    _stand_in(hub / official_filename("dinov2_vitb14_reg"), "dinov2_vitb14_reg", 1)
    dinoret.index(root / "photos", index=root / ".dinoret", weights=root / "dinov2_vits14_pretrain.pth",
                  workers=0, progress=False)
    return root


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"<!-- section:python -->(.*?)<!-- /section:python -->", text, re.S)
    assert section, "README.md has no python section"
    return re.findall(r"```python\n(.*?)```", section.group(1), re.S)


def test_readme_python_section_runs(workspace, monkeypatch, capsys):
    blocks = readme_python_blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(workspace)
    namespace: dict = {"__name__": "readme"}
    for n, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {n}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "error: no index at" in out  # the error example caught dinoret.Error
    assert isinstance(namespace["idx"], dinoret.Index) and isinstance(namespace["groups"], dinoret.Groups)
    assert namespace["hits"][0].rank == 1 and namespace["vecs"].shape == (len(namespace["images"]), 64)
    assert (workspace / "dups.html").is_file() and (workspace / "dups.csv").is_file()
    assert namespace["leaks"].params["against"] == str((workspace / "test_set").resolve())
    assert not namespace["backbone"].training
    assert namespace["done"]["action"] == "clustered" and len(namespace["pick"]) == 5
    assert (workspace / "train.txt").read_text().splitlines() == namespace["pick"].paths
    assert namespace["run"]["iterations"] == 2 and namespace["small"]["backbone"].is_file()
    assert len(namespace["idx2"]) == len(namespace["idx"])


def _public_objects():
    for name in dinoret.__all__:
        yield name, getattr(dinoret, name)


def _doctests():
    finder = doctest.DocTestFinder(recurse=True)
    for name, obj in _public_objects():
        for test in finder.find(obj, f"dinoret.{name}", globs={"dinoret": dinoret}):
            if test.examples:
                yield test


def test_every_public_name_and_method_has_an_example():
    missing = []
    for name, obj in _public_objects():
        if ">>>" not in (obj.__doc__ or ""):
            missing.append(name)
        if inspect.isclass(obj) and obj.__module__.startswith("dinoret.api"):
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member) and ">>>" not in (member.__doc__ or ""):
                    missing.append(f"{name}.{attr}")
    assert missing == []


def test_help_lists_the_public_names():
    import pydoc

    text = pydoc.render_doc(dinoret, renderer=pydoc.plaintext)
    for name in ("open", "index", "embed", "load_backbone", "class Index", "class Groups", "class Hit", "Error",
                 "train", "distill", "class Selection", "curate_clusters", "curate_sample", "curate_retrieve"):
        assert name in text, name


def test_docstring_examples_run(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = list(_doctests())
    assert len(tests) >= 30
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
