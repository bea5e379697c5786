"""``dinoret curate``: the DINOv2 data-curation steps over an index (clusters, sample, retrieve)."""
from __future__ import annotations

import click

from dinoret.options import device_option, index_option, weights_option

MAX_LISTED = 10


def _warn(notes: list[str]) -> None:
    for note in notes:
        click.echo(f"warning: {note}", err=True)


def _exclude_options(f):
    f = click.option("--exclude-threshold", type=click.FloatRange(-1, 1), default=None,
                     help="Cosine at or above which two images are copies, for --exclude [default: 0.90, see README].")(f)
    f = click.option("--exclude", "exclude", type=click.Path(exists=True), metavar="DIR_OR_INDEX",
                     help="An evaluation set (image folder or index): drop every pool image whose duplicate "
                          "component touches it.")(f)
    return f


def _output_options(f):
    f = click.option("--copy-to", type=click.Path(file_okay=False), help="Also copy the selected files here.")(f)
    f = click.option("--link-to", type=click.Path(file_okay=False),
                     help="Also make symbolic links to the selected files here (paths kept relative to their common folder).")(f)
    f = click.option("--report", "report_path", type=click.Path(dir_okay=False),
                     help="Write an HTML report (cluster tree, galleries, what was excluded).")(f)
    f = click.option("--out", "-o", "out", required=True, type=click.Path(dir_okay=False),
                     help="Selection file: .txt (paths), .csv or .json (ids, clusters, reason, seed, similarity).")(f)
    return f


def _selection_options(f):
    """Options `sample` and `retrieve` share, after their own."""
    for option in reversed([
        click.option("--seed", default=0, show_default=True, type=int, help="Random seed for --strategy random."),
        _output_options, _exclude_options, weights_option, device_option,
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]):
        f = option(f)
    return f


@click.group("curate")
def command() -> None:
    """Curate a training set from an index, as the DINOv2 data pipeline does.

    \b
      clusters  hierarchical k-means over the index's stored vectors (saved in the index)
      sample    a balanced selection of N images over those clusters
      retrieve  the pool images near a curated seed set (per image or per cluster)

    \b
    Example:
      dinoret curate clusters --clusters 1000,100,10
      dinoret curate sample --target 5000 --out train.txt --exclude ./test_set
      dinoret curate retrieve --seeds ./curated --mode sample -k 4 --out retrieved.csv
      dinoret train train.txt --output runs/s14 --config configs/vits14.yaml
    """


@command.command("clusters")
@index_option
@click.option("--clusters", "levels", default=None, metavar="K1,K2,...",
              help="Clusters per level, finest first (e.g. 10000,1000,100). Required the first time.")
@click.option("--resample", default="0", show_default=True, metavar="N[,N...]",
              help="Resampling steps per level (one value for every level, or one per level).")
@click.option("--resample-points", default=10, show_default=True, type=click.IntRange(1),
              help="Vectors taken per cluster in a resampling step.")
@click.option("--resample-strategy", type=click.Choice(["closest", "random"]), default="closest", show_default=True,
              help="Which vectors of a cluster a resampling step takes.")
@click.option("--iters", default=10, show_default=True, type=click.IntRange(0), help="Lloyd iterations per k-means.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed: the same seed gives the same clusters.")
@click.option("--recluster", is_flag=True, help="Replace the index's clustering by a new one.")
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def clusters_command(index_dir, levels, resample, resample_points, resample_strategy, iters, seed, recluster, device,
                     quiet) -> None:
    """Hierarchical k-means over the index's stored vectors (nothing is re-embedded), saved in
    the index. Run again after indexing more images: they join their nearest leaf cluster
    (--recluster redoes the clustering). Under torchrun the work is split over the processes.

    \b
    Example:
      dinoret curate clusters --clusters 10000,1000,100 --resample 10
      dinoret curate clusters                                   # add newly indexed images
      dinoret curate clusters --clusters 2000,200 --recluster
      torchrun --nproc_per_node=8 -m dinoret curate clusters --clusters 100000,10000,1000 --device cuda
    """
    import numpy as np

    import dinoret

    idx = dinoret.open(index_dir, device=device)
    idx.writable = True
    done = idx.curate_clusters(levels, resample, resample_points, resample_strategy, iters, seed, recluster,
                               progress=not quiet)
    if done is None:
        return  # another torchrun rank: rank 0 reports
    _warn(done["notes"])
    if done["action"] == "updated":
        click.echo(f"clustering updated: {done['added']} new images put in their nearest leaf cluster, "
                   f"{done['removed']} removed images dropped; {done['images']} images "
                   f"(--recluster redoes the clustering)")
    elif done["action"] == "up to date":
        click.echo(f"the clustering is up to date ({done['images']} images); --recluster redoes it")
    else:
        click.echo(f"clustered {done['images']} images in {done['seconds']:.1f} s"
                   + (f" over {done['processes']} processes" if done["processes"] > 1 else ""))
        for level, (k, sizes) in enumerate(zip(done["levels"], done["sizes"]), 1):
            click.echo(f"  level {level}: {k} clusters, images per cluster "
                       f"min {sizes.min()} / median {int(np.median(sizes))} / max {sizes.max()}")


def _selection_outputs(selection, out, report_path, link_to, copy_to, quiet) -> None:
    written = selection.write(out)
    click.echo(f"{len(selection)} images written to {written}")
    if selection.excluded:
        click.echo(f"{len(selection.excluded)} pool images excluded (listed in {selection.excluded_file}); for example:")
        for d in selection.excluded[:MAX_LISTED]:
            how = "same file/pixels as" if d.reason == "exact" else f"cosine {d.similarity:.3f} to"
            via = f" via image {d.via_id}" if d.via_id is not None else ""
            click.echo(f"  {d.path}: {how} {d.excluded_path}{via}")
    if link_to or copy_to:
        done, problems = selection.link_to(link_to) if link_to else selection.copy_to(copy_to)
        click.echo(f"{'linked' if link_to else 'copied'} {done} files into {link_to or copy_to}")
        for p in problems[:MAX_LISTED]:
            click.echo(f"  not placed: {p}", err=True)
    if report_path:
        path = selection.to_html(report_path, progress=not quiet)
        click.echo(f"report written to {path}")


def _check_outputs(out, link_to, copy_to) -> None:
    """Refuse bad output options before any work is done."""
    from dinoret.api.selection import check_selection_path

    check_selection_path(out)
    if link_to and copy_to:
        raise click.UsageError("give --link-to or --copy-to, not both")


@command.command("sample")
@index_option
@click.option("--target", "-n", required=True, type=click.IntRange(1), help="How many images to select.")
@click.option("--strategy", type=click.Choice(["random", "closest"]), default="random", show_default=True,
              help="Inside a leaf cluster: random images, or those closest to its centroid.")
@_selection_options
def sample_command(index_dir, target, strategy, seed, out, report_path, link_to, copy_to, exclude, exclude_threshold,
                   weights, device, quiet) -> None:
    """A balanced selection of --target images over the index's clusters: the target is
    split over the top-level clusters with a cap (small clusters whole, large ones capped),
    then over their children, down to the leaves.

    \b
    Example:
      dinoret curate sample --target 100000 --out train.txt
      dinoret curate sample --target 5000 --strategy closest --out pick.csv --report pick.html
      dinoret curate sample --target 5000 --exclude ./eval_images --out train.json --link-to ./train_set
    """
    import dinoret

    _check_outputs(out, link_to, copy_to)
    idx = dinoret.open(index_dir, device=device, weights=weights)
    selection = idx.curate_sample(target, strategy, seed, exclude, exclude_threshold, progress=not quiet)
    _warn(selection.notes)
    _selection_outputs(selection, out, report_path, link_to, copy_to, quiet)


@command.command("retrieve")
@index_option
@click.option("--seeds", "seeds", required=True, type=click.Path(exists=True), metavar="DIR_OR_INDEX",
              help="The curated seed images: a folder (embedded with the index's model) or an index of the same model.")
@click.option("--mode", type=click.Choice(["sample", "cluster"]), default="sample", show_default=True,
              help="sample: the k nearest pool images of every seed; cluster: pool images of the clusters holding seeds.")
@click.option("-k", "k", default=4, show_default=True, type=click.IntRange(1),
              help="--mode sample: neighbours per seed (the DINOv2 paper uses 4; 32 for ImageNet-1k).")
@click.option("--min-hits", default=3, show_default=True, type=click.IntRange(1),
              help="--mode cluster: a cluster is used when it holds at least this many seeds.")
@click.option("--per-cluster", default=10_000, show_default=True, type=click.IntRange(1),
              help="--mode cluster: at most this many pool images per cluster used.")
@click.option("--level", default=1, show_default=True, type=click.IntRange(1),
              help="--mode cluster: the clustering level whose clusters are used (1 = leaves).")
@click.option("--strategy", type=click.Choice(["random", "closest"]), default="random", show_default=True,
              help="--mode cluster, in a cluster with more than --per-cluster images: random ones or those closest to its seeds.")
@_selection_options
def retrieve_command(index_dir, seeds, mode, k, min_hits, per_cluster, level, strategy, seed, out, report_path,
                     link_to, copy_to, exclude, exclude_threshold, weights, device, quiet) -> None:
    """Pool images close to a curated seed set, as the DINOv2 data pipeline retrieves them.

    Seed images are embedded on the fly with the index's own model, weights and
    preprocessing (or read from another index made with the same model); the pool is never
    re-embedded. --mode cluster needs `dinoret curate clusters` first.

    \b
    Example:
      dinoret curate retrieve --seeds ./curated --mode sample -k 4 --out near.txt
      dinoret curate retrieve --seeds ./curated --mode cluster --min-hits 3 --per-cluster 10000 --out more.csv
      dinoret curate retrieve --seeds /data/curated_index --out near.json --exclude ./test_set --report near.html
    """
    import dinoret

    _check_outputs(out, link_to, copy_to)
    idx = dinoret.open(index_dir, device=device, weights=weights)
    selection = idx.curate_retrieve(seeds, mode, k, min_hits, per_cluster, level, strategy, seed, exclude,
                                    exclude_threshold, progress=not quiet)
    _warn(selection.notes)
    found = selection.params
    if mode == "sample":
        click.echo(f"{found['retrieved']} pool images retrieved by {found['seeds']} seeds (k={k}; "
                   f"{found['collisions']} found by more than one seed)")
    else:
        click.echo(f"{found['clusters_used']} of the {found['clusters_with_seeds']} level-{level} clusters "
                   f"holding seeds have at least {min_hits}; {found['retrieved']} pool images retrieved from them")
    _selection_outputs(selection, out, report_path, link_to, copy_to, quiet)
