"""``dinoret.train`` and ``dinoret.distill``: the runs ``dinoret train`` and ``dinoret distill``
make (the commands call these), with the training images found and decoded as ``dinoret
index`` finds and decodes them."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from dinoret.core.distributed import env_rank
from dinoret.core.errors import UserError

OnFiles = Callable[[list[str], list[tuple[str, str]]], None]


def load_training_image(path: str, draft_size: int | None = None):
    """The indexer's decoding (EXIF orientation, RGB, bomb and truncation checks); raises
    ``SkipFile`` for a file the trainer should skip. Module-level so loader workers can pickle it."""
    from dinoret.indexer.decode import open_image

    return open_image(path, draft_size=draft_size).image


def gather_files(data: Sequence[str | os.PathLike], output: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The training images named by ``data``, in order, each once: every image under a
    folder (found by content, as ``dinoret index`` finds them; ``output`` is left out), and
    the paths listed in a selection file (``.txt``, ``.csv`` or ``.json``, as ``dinoret
    curate`` writes them). Returns (files, unusable (path, reason))."""
    from dinoret.indexer.discover import find_images
    from dinoret.retrieval.selection_files import SUFFIXES, read_selection

    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    for item in data:
        p = Path(item)
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            for listed in read_selection(p):
                if Path(listed).is_file():
                    files.append(listed)
                else:
                    skipped.append((listed, f"listed in {p.name} but not found"))
        else:
            files += [str(f) for f in find_images([p], exclude=[Path(output)],
                                                  on_skip=lambda f, r: skipped.append((str(f), r)))]
    return list(dict.fromkeys(files)), skipped


def _data_list(data) -> list[str]:
    if data is None:
        return []
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    missing = [os.fspath(d) for d in items if not os.path.exists(d)]
    if missing:
        raise UserError(f"{missing[0]}: no such file or folder", param="data_dirs")
    return [os.fspath(d) for d in items]


def _set_list(values) -> list[str]:
    """``set`` as ``KEY=VALUE`` strings: a mapping ``{"optim.epochs": 10}`` or strings already."""
    if isinstance(values, Mapping):
        import yaml

        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in values.items()]
    return [values] if isinstance(values, str) else list(values)


def _files(data: list[str], output: Path, resume: bool, on_files: OnFiles | None) -> list[str] | None:
    """The images to train on (None on ``resume``: the run trains on its recorded list)."""
    if resume:
        return None
    if not data:
        raise UserError("give at least one folder or selection file of images to train on "
                        "(or resume=True to continue a run)", param="data_dirs")
    files, unusable = gather_files(data, output)
    if on_files is not None and env_rank() == 0:
        on_files(files, unusable)
    return files


def _run_folder(output: str | os.PathLike) -> Path:
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {output}: {e.strerror or e}", param="output") from None
    return out


def _configs(config) -> list[str]:
    return [] if config is None else [os.fspath(config)] if isinstance(config, (str, os.PathLike)) else \
        [os.fspath(c) for c in config]


def train(data=None, output: str | os.PathLike = "runs/train", config=(), set=(), resume: bool = False,
          device: str = "auto", progress: bool = True, on_files: OnFiles | None = None) -> dict:
    """Train a DINOv2 backbone (DINO + iBOT + KoLeo, EMA teacher) on the images under the
    ``data`` folders and those listed in ``data`` selection files (``.txt``/``.csv``/``.json``,
    as :meth:`dinoret.Selection.write` writes them), as ``dinoret train DATA --output OUTPUT``
    does, with its options: ``config`` (YAML/TOML files, merged in order), ``set``
    (``{"optim.epochs": 10}`` or ``["optim.epochs=10"]``), ``resume`` (continue the run in
    ``output`` from its newest checkpoint, bit for bit, on the files it started with),
    ``device``. Under ``torchrun`` every process calls it.

    ``output`` gets ``teacher_backbone.pth`` (official key layout: ``dinoret.index(...,
    weights=...)`` and :func:`dinoret.load_backbone` take it), checkpoints, ``config.yaml``
    and ``metrics.jsonl``. ``on_files(files, unusable)`` is called (on rank 0) once the
    images are found, before training starts. Returns a summary: ``iterations``,
    ``total_iterations``, ``losses``, ``images_per_s``, ``skipped``, ``backbone`` (its path).

    >>> run = dinoret.train("photos", output="runs/first", config="configs/tiny.yaml",
    ...                     set={"optim.epochs": 1, "train.OFFICIAL_EPOCH_LENGTH": 2}, progress=False)
    >>> run["iterations"], run["backbone"].name
    (2, 'teacher_backbone.pth')
    >>> dinoret.load_backbone(run["backbone"]).training
    False
    """
    from dinoret.trainer.config import largest_crop, make_config, read_config_file
    from dinoret.trainer.train import train as train_run

    out = _run_folder(output)
    configs, sets = _configs(config), _set_list(set) + ([f"train.device={device}"] if device != "auto" else [])
    saved = out / "config.yaml"
    cfg = make_config(configs, sets, base=read_config_file(saved) if resume and saved.is_file() else None)
    files = _files(_data_list(data), out, resume, on_files)
    load = partial(load_training_image, draft_size=largest_crop(cfg))
    summary = train_run(files, load, out, configs, sets, resume=resume, progress=progress)
    return {**summary, "backbone": out / "teacher_backbone.pth"}


def distill(data=None, output: str | os.PathLike = "runs/distill", teacher: str | os.PathLike | None = None,
            student: str | None = None, method: str | None = None, config=(), set=(), resume: bool = False,
            device: str = "auto", progress: bool = True, on_files: OnFiles | None = None) -> dict:
    """Distil a frozen ``teacher`` into a smaller ViT on the images of ``data``, as ``dinoret
    distill DATA --teacher T --output OUTPUT`` does. ``teacher``: an official model name
    (``dinov2_vitl14``, ...), a weights file, or a :func:`dinoret.train` run folder or
    checkpoint (whose DINO/iBOT heads are then used); ``student``: ``student.arch``
    (``vit_small`` by default; the config's ``student.embed_dim``/``depth`` shrink it);
    ``method``: ``heads`` (the teacher's DINO/iBOT targets), ``feature`` (cosine on its class
    and patch tokens), ``hybrid`` (``feature`` plus the student's own DINO loss) or ``auto`` (``heads`` when the
    teacher has heads, else ``hybrid``).
    ``config``, ``set``, ``resume``, ``device``, ``on_files``
    and the summary as in :func:`train`; the result is ``student_backbone.pth``.

    >>> short = {"optim.epochs": 1, "train.OFFICIAL_EPOCH_LENGTH": 2}
    >>> teacher = dinoret.train("photos", output="runs/teacher", config="configs/tiny.yaml", set=short, progress=False)
    >>> run = dinoret.distill("photos", output="runs/student", teacher="runs/teacher",
    ...                       config="configs/distill_tiny.yaml", set=short, progress=False)
    >>> run["iterations"], run["backbone"].name
    (2, 'student_backbone.pth')
    """
    from dinoret.trainer.config import largest_crop, read_config_file
    from dinoret.trainer.distill import distill as distill_run
    from dinoret.trainer.distill import make_distill_config

    if student is not None and student not in ARCHS:
        raise UserError(f"student must be one of {', '.join(ARCHS)}, not {student!r}", param="arch")
    if method is not None and method not in METHODS:
        raise UserError(f"method must be one of {', '.join(METHODS)}, not {method!r}", param="method")
    out = Path(output)
    configs = _configs(config)
    sets = _set_list(set) + [f"student.arch={student}"] * bool(student) + [f"distill.method={method}"] * bool(method)
    sets += [f"train.device={device}"] if device != "auto" else []
    saved = out / "config.yaml"
    cfg = make_distill_config(configs, sets, base=read_config_file(saved) if resume and saved.is_file() else None)
    if not resume and not teacher:
        raise UserError("give the teacher: a model name, a weights file or a training run folder", param="teacher")
    files = _files(_data_list(data), out, resume, on_files)
    load = partial(load_training_image, draft_size=largest_crop(cfg))
    summary = distill_run(files, load, out, None if teacher is None else os.fspath(teacher), configs, sets,
                          resume=resume, progress=progress)
    return {**summary, "backbone": out / "student_backbone.pth"}


ARCHS = ("vit_small", "vit_base", "vit_large", "vit_giant2")
METHODS = ("auto", "heads", "feature", "hybrid")
