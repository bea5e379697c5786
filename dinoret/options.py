"""Options shared by several commands, defined once."""
from __future__ import annotations

import click

from dinoret.indexer.layout import DEFAULT_INDEX_DIR, INDEX_DIR_ENV


def not_empty(ctx: click.Context, param: click.Parameter, value):
    """Refuse an empty path (``--index ""``), which would otherwise mean the current folder."""
    values = value if isinstance(value, tuple) else (value,)
    if any(v == "" for v in values):
        raise click.BadParameter("an empty path; give a folder (or . for the current one)", ctx=ctx, param=param)
    return value


index_option = click.option(
    "--index",
    "index_dir",
    default=DEFAULT_INDEX_DIR,
    envvar=INDEX_DIR_ENV,
    show_default=True,
    type=click.Path(file_okay=False),
    callback=not_empty,
    help="Index directory (or set DINORET_INDEX).",
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Where to run the model: a CUDA GPU when present, else the CPU.",
)
model_option = click.option(
    "--model",
    default=None,
    help="Backbone name (dinov2_vits14, dinov2_vitb14_reg, ...; see `dinoret models`).",
)
weights_option = click.option(
    "--weights",
    default=None,
    type=click.Path(dir_okay=False),
    help="Weights file: an official DINOv2 .pth or a dinoret checkpoint.",
)
