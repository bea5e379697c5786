from __future__ import annotations

import json

import click

from dinoret.console import shown
from dinoret.options import index_option


@click.command("info")
@index_option
@click.option("--skipped", "list_skipped", is_flag=True, help="List every skipped file with its reason.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def command(index_dir, list_skipped, as_json) -> None:
    """What is in the index: model, images, shards, index type, disk use.

    \b
    Example:
      dinoret info
      dinoret info --skipped --index /data/idx
    """
    import dinoret
    from dinoret.core.units import human_size

    idx = dinoret.open(index_dir)
    stats = idx.info()
    if as_json:
        stats["skipped_files"] = [{"path": p, "reason": r} for p, r in idx.skipped()] if list_skipped else None
        click.echo(json.dumps(stats, indent=2, default=str))
        return
    if list_skipped:
        for path, reason in idx.skipped():
            click.echo(f"{reason}\t{shown(path)}")
        return
    ident = idx.identity
    params = stats["index_params"]
    kind = stats["index_type"] + (f" ({params['factory']}, nprobe {params['nprobe']})" if stats["index_type"] == "ivfpq" else "")
    sizes = ", ".join(str(n) for _, n in idx.shard_sizes())
    run = stats["last_run"]
    lines = [
        f"index:      {shown(idx.root)}",
        f"model:      {ident['model']} (dim {ident['dim']}, weights sha256 {ident['weights_sha256'][:12]}…, "
        f"preprocess {ident['preprocess']['mode']}, precision {ident.get('precision', 'fp32')})",
        f"weights:    {shown(idx.weights)}",
        f"images:     {stats['images']}",
        f"skipped:    {stats['skipped']} (dinoret info --skipped)",
        f"index type: {kind}",
        f"shards:     {stats['shards']} ({sizes or 'empty'} vectors)" + (
            f"; {stats['not_in_shards']} images not in the shards yet (searched exactly; "
            "the next `dinoret index` run adds them)" if stats["not_in_shards"] else ""),
        f"disk use:   {human_size(stats['disk_bytes'])}",
    ]
    if run:
        lines.append(f"last run:   {run['started']:%Y-%m-%d %H:%M} {run['status']}: indexed {run['indexed']}, "
                     f"unchanged {run['unchanged']}, removed {run['removed']}, skipped {run['skipped']}")
    click.echo("\n".join(lines))
