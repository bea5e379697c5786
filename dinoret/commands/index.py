from __future__ import annotations

import click

from dinoret.console import shown
from dinoret.options import device_option, index_option, model_option, not_empty, weights_option


def _summary_lines(summary, max_listed: int = 20) -> list[str]:
    lines = [
        f"indexed {summary.indexed}, unchanged {summary.unchanged}, removed {summary.removed}, "
        f"skipped {len(summary.skipped)} in {summary.wall_s:.1f} s"
        + (f" ({summary.indexed / summary.embed_s:.1f} images/s embedding)" if summary.indexed and summary.embed_s else "")
    ]
    if summary.skipped:
        lines.append("skipped: " + ", ".join(f"{r} ({n})" for r, n in summary.skip_reasons().most_common()))
        lines += [f"  {shown(path)}: {reason}" for path, reason in summary.skipped[:max_listed]]
        if len(summary.skipped) > max_listed:
            lines.append(f"  ... {len(summary.skipped) - max_listed} more: `dinoret info --skipped`")
    if summary.sync:
        spec = summary.sync.spec
        kind = spec["type"] if spec["type"] == "flat" else f"ivfpq {spec['factory']}"
        lines.append(f"index: {summary.total} images, {kind}" + (" (retrained)" if summary.sync.rebuilt and spec["type"] != "flat" else ""))
    return lines


@click.command("index")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), callback=not_empty)
@index_option
@model_option
@weights_option
@device_option
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per model call.")
@click.option("--workers", default=None, type=click.IntRange(0), help="Decoding processes [default: half the cores, at most 8].")
@click.option("--preprocess", type=click.Choice(["crop", "whole"]), default=None,
              help="crop: official centre crop (default for a new index); whole: keep the whole image.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default=None,
              help="fp32 (default for a new index) or int8: ~2x faster on a CPU (ONNX Runtime, int8 weights), "
                   "features within cosine 0.99 of fp32. Fixed when the index is created; queries follow it.")
@click.option("--index-type", type=click.Choice(["auto", "flat", "ivfpq"]), default="auto", show_default=True,
              help="auto: exact while small, IVF-PQ past 50,000 images.")
@click.option("--shard-size", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="Most vectors per Faiss shard (fixed when the index is created).")
@click.option("--commit-every", default=1024, show_default=True, type=click.IntRange(1),
              help="Images embedded between commits: the most work a crash can lose.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(paths, index_dir, model, weights, device, batch_size, workers, preprocess, precision, index_type, shard_size,
            commit_every, quiet) -> None:
    """Embed the images under PATHS into the index (only new or changed files).

    Images are found by content in any folder depth; files that cannot be read are
    skipped and listed. Files gone from PATHS are dropped from the index. Safe to stop
    at any moment (even kill -9): run the same command again to finish.

    The first run uses --weights FILE, or the official weights of --model (default
    dinov2_vits14), fetched once into the torch hub cache. A later run reads only new or
    changed files and loads the model only if one needs embedding.

    Under torchrun every process embeds a share of the files and rank 0 writes the
    index (the photos must be at the same paths on every machine).

    \b
    Example:
      dinoret index ./photos
      dinoret index ./photos ./more --index /data/idx --weights teacher_backbone.pth
      dinoret index ./photos --precision int8 --index ./idx8   # the faster CPU path
      torchrun --nproc_per_node=8 -m dinoret index /data/photos --index /data/idx
    """
    import dinoret

    idx = dinoret.index(list(paths), index=index_dir, model=model, weights=weights, device=device,
                        batch_size=batch_size, workers=workers, preprocess=preprocess, precision=precision,
                        index_type=index_type, shard_size=shard_size, commit_every=commit_every, progress=not quiet)
    if idx is None:
        return  # another torchrun rank: rank 0 prints the summary
    for line in _summary_lines(idx.summary):
        click.echo(line)
