from __future__ import annotations

from pathlib import Path

import click

from dinoret.console import shown
from dinoret.options import device_option


def load_training_image(path: str, draft_size: int | None = None):
    """The indexer's decoding (EXIF orientation, RGB, bomb and truncation checks); raises
    ``SkipFile`` for a file the trainer should skip. Module-level so loader workers can pickle it."""
    from dinoret.indexer.decode import open_image

    return open_image(path, draft_size=draft_size).image


def gather_files(data: list[str] | tuple[str, ...], output: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """The training images named by ``data``, in order, each once: every image under a
    folder (found by content, as `dinoret index` finds them), and the paths listed in a
    selection file (``.txt``, ``.csv`` or ``.json``, as `dinoret curate` writes them).
    Returns (files, skipped (path, reason))."""
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
            files += [str(f) for f in find_images([p], exclude=[output], on_skip=lambda f, r: skipped.append((str(f), r)))]
    return list(dict.fromkeys(files)), skipped


def training_files(data_dirs: tuple[str, ...], output: Path, resume: bool, main: bool) -> list[str] | None:
    """The images under ``data_dirs`` (None on ``--resume``: the run trains on its recorded
    list), with the unusable ones reported by rank 0. Shared by ``dinoret distill``."""
    from dinoret.core.errors import UserError

    if resume:
        if data_dirs and main:
            click.echo("--resume: training on the files recorded when the run started")
        return None
    if not data_dirs:
        raise UserError("give at least one DATA folder or selection file (or --resume to continue a run)")
    files, bad = gather_files(data_dirs, output)
    if main:
        click.echo(f"{len(files)} images under {', '.join(map(shown, data_dirs))}"
                   + (f"; {len(bad)} unusable files skipped" if bad else ""))
        for path, reason in bad[:20]:
            click.echo(f"  skipped {shown(path)}: {reason}")
    return files


def report(summary: dict, backbone: Path) -> None:
    """The closing lines of a training command: iterations, loss, speed, and the backbone to use."""
    losses = summary["losses"]
    click.echo(
        f"{summary['iterations']}/{summary['total_iterations']} iterations, loss {losses.get('total_loss', float('nan')):.4f}, "
        f"{summary['images_per_s']:.1f} images/s, {len(summary['skipped'])} files skipped while training"
    )
    click.echo(f"{backbone.name.removesuffix('.pth').replace('_', ' ')}: {shown(backbone)} "
               f"(dinoret index PHOTOS --weights {shown(backbone)})")


@click.command("train")
@click.argument("data_dirs", nargs=-1, type=click.Path(exists=True), metavar="DATA...")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, teacher_backbone.pth.")
@click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML or TOML config (official DINOv2 keys); several are merged in order.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one config value, e.g. --set optim.epochs=10 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its newest checkpoint.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(data_dirs, output, configs, sets, resume, device, quiet) -> None:
    """Train a DINOv2 backbone (DINO + iBOT + KoLeo, EMA teacher) on the images under each
    DATA folder, or listed in a DATA selection file (.txt/.csv/.json, as `dinoret curate` writes).

    Writes --output/teacher_backbone.pth (official key layout; use it with
    `dinoret index --weights`), checkpoints and metrics.jsonl. With --resume the run
    continues exactly where its last checkpoint stopped, on the files it started with.
    Many GPUs or machines: start the same command under torchrun.

    \b
    Example:
      dinoret train ./photos --output runs/tiny --config configs/tiny.yaml
      dinoret train train.txt --output runs/curated --config configs/vits14.yaml   # a curate selection
      dinoret train ./photos --output runs/s14 --config configs/vits14.yaml --set train.batch_size_per_gpu=32
      dinoret train --output runs/s14 --resume
      torchrun --nproc_per_node=8 -m dinoret train /data/imgs --output runs/l14 --config configs/vitl14.yaml
    """
    import os
    from functools import partial

    from dinoret.core.errors import UserError
    from dinoret.trainer.config import largest_crop, make_config, read_config_file
    from dinoret.trainer.train import train

    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run folder {output}: {e.strerror or e}") from None
    main = int(os.environ.get("RANK", "0")) == 0
    sets = list(sets) + ([f"train.device={device}"] if device != "auto" else [])
    saved = out / "config.yaml"
    cfg = make_config(configs, sets, base=read_config_file(saved) if resume and saved.is_file() else None)
    files = training_files(data_dirs, out, resume, main)
    load = partial(load_training_image, draft_size=largest_crop(cfg))
    summary = train(files, load, out, configs, sets, resume=resume, progress=not quiet)
    if main:
        report(summary, out / "teacher_backbone.pth")
