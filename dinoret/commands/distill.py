from __future__ import annotations

from pathlib import Path

import click

from dinoret.api.training import ARCHS, METHODS
from dinoret.commands.train import print_files, report, resume_note
from dinoret.options import device_option


@click.command("distill")
@click.argument("data_dirs", nargs=-1, type=click.Path(exists=True), metavar="DATA_DIR...")
@click.option("--teacher", "-t", default=None, metavar="NAME|FILE|RUN_DIR",
              help="Frozen teacher: an official model name (dinov2_vitl14, ...), a weights file, or a "
                   "`dinoret train` run folder or checkpoint (whose DINO/iBOT heads are used).")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints, metrics.jsonl, student_backbone.pth.")
@click.option("--student", "arch", type=click.Choice(ARCHS), default=None,
              help="Student architecture (student.arch; default vit_small; student.embed_dim/depth shrink it).")
@click.option("--method", type=click.Choice(METHODS), default=None,
              help="heads: DINO + iBOT + KoLeo against the teacher's own heads (a dinoret teacher); "
                   "feature: cosine on class and patch tokens (any teacher); hybrid: feature plus the "
                   "student's own DINO loss against its EMA (any teacher); auto: heads when the teacher has them, else hybrid.")
@click.option("--config", "configs", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="YAML or TOML config (the keys of `dinoret train` and a distill section); merged in order.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override one config value, e.g. --set optim.epochs=10 (repeatable).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its newest checkpoint.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(data_dirs, teacher, output, arch, method, configs, sets, resume, device, quiet) -> None:
    """Distil a frozen teacher into a smaller ViT on the images under DATA_DIR.

    The student learns the teacher's DINO and iBOT targets, or its features (with
    --method hybrid, the default for a teacher without heads, plus its own DINO loss); a spare EMA
    of the student is the result: --output/student_backbone.pth (official key layout; use
    it with `dinoret index --weights`). Teacher and student must share the patch size.
    With --resume the run continues exactly where its last checkpoint stopped. Many GPUs
    or machines: start the same command under torchrun.

    \b
    Example:
      dinoret distill ./photos --teacher runs/l14 --output runs/s14 --config configs/distill_vits14.yaml
      dinoret distill ./photos --teacher dinov2_vitl14 --method hybrid --output runs/s14-h --student vit_small
      dinoret distill ./photos --teacher runs/tiny --output runs/tiny-s --config configs/distill_tiny.yaml
      dinoret distill --output runs/s14 --resume
    """
    import os

    import dinoret

    resume_note(data_dirs, resume)
    summary = dinoret.distill(list(data_dirs), output, teacher=teacher, student=arch, method=method, config=configs,
                              set=sets, resume=resume, device=device, progress=not quiet,
                              on_files=print_files(data_dirs))
    if int(os.environ.get("RANK", "0")) == 0:
        report(summary, summary["backbone"])
