from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from dinoret.console import shown
from dinoret.options import device_option


def print_files(data_dirs) -> Callable[[list[str], list[tuple[str, str]]], None]:
    """What ``dinoret train`` and ``dinoret distill`` print once the images are found."""
    def echo(files: list[str], bad: list[tuple[str, str]]) -> None:
        click.echo(f"{len(files)} images under {', '.join(map(shown, data_dirs))}"
                   + (f"; {len(bad)} unusable files skipped" if bad else ""))
        for path, reason in bad[:20]:
            click.echo(f"  skipped {shown(path)}: {reason}")
    return echo


def resume_note(data_dirs, resume: bool) -> None:
    if resume and data_dirs and int(os.environ.get("RANK", "0")) == 0:
        click.echo("--resume: training on the files recorded when the run started")


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
    import dinoret

    resume_note(data_dirs, resume)
    summary = dinoret.train(list(data_dirs), output, config=configs, set=sets, resume=resume, device=device,
                            progress=not quiet, on_files=print_files(data_dirs))
    if int(os.environ.get("RANK", "0")) == 0:
        report(summary, summary["backbone"])
