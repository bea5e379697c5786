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
    import time

    import numpy as np

    from dinoret.core import distributed
    from dinoret.core.errors import UserError
    from dinoret.retrieval.clusterings import clustering_lock, load_clustering, save_clustering
    from dinoret.retrieval.curate_clusters import change_notes, check_model, cluster_index, update_clustering
    from dinoret.retrieval.hierarchy import parse_levels, per_level
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.kmeans import KMeansParams, Shard

    ctx = distributed.setup(device)
    try:
        reader = open_index(index_dir)
        main = ctx.is_main
        existing = load_clustering(reader.engine, reader.root) if not recluster else None
        if existing is not None:
            h, row = existing
            if levels is not None and parse_levels(levels) != row.params["levels"]:
                raise UserError(f"the index already has a clustering with --clusters "
                                f"{','.join(map(str, row.params['levels']))}: add --recluster to replace it")
            check_model(reader, row)
            t0 = time.perf_counter()
            h, added, removed = update_clustering(reader, h, ctx.device)
            if main:
                if added or removed:
                    with clustering_lock(reader.root):
                        save_clustering(reader.engine, reader.root, h, reader.identity, time.perf_counter() - t0,
                                        note=f"updated: {added} added, {removed} removed")
                    _warn(change_notes(0, removed, row.n_images))
                    click.echo(f"clustering updated: {added} new images put in their nearest leaf cluster, "
                               f"{removed} removed images dropped; {len(h.ids)} images "
                               f"(--recluster redoes the clustering)")
                else:
                    click.echo(f"the clustering is up to date ({len(h.ids)} images); --recluster redoes it")
            return
        if levels is None:
            raise UserError("give --clusters K1,K2,... (finest level first, e.g. 10000,1000,100)")
        ks = parse_levels(levels)
        steps = per_level([int(v) for v in resample.split(",") if v.strip()] if resample else [0], len(ks), "--resample")
        params = KMeansParams(iters=iters, resample_points=resample_points, resample_strategy=resample_strategy,
                              device=ctx.device)
        h, seconds = cluster_index(reader, ks, steps, params, seed, Shard(ctx.rank, ctx.world_size),
                                   progress=not quiet and main)
        if main:
            with clustering_lock(reader.root):
                save_clustering(reader.engine, reader.root, h, reader.identity, seconds)
            click.echo(f"clustered {len(h.ids)} images in {seconds:.1f} s"
                       + (f" over {ctx.world_size} processes" if ctx.world_size > 1 else ""))
            for level in range(1, h.depth + 1):
                sizes = h.sizes(level)
                click.echo(f"  level {level}: {h.levels[level - 1]} clusters, images per cluster "
                           f"min {sizes.min()} / median {int(np.median(sizes))} / max {sizes.max()}")
        distributed.barrier()
    finally:
        distributed.teardown(ctx)


def _selection_outputs(reader, selection, out, report_path, link_to, copy_to, report_data, quiet) -> None:
    from dinoret.retrieval.selection_files import link_or_copy, write_excluded, write_selection

    written = write_selection(selection, out)
    click.echo(f"{len(selection.images)} images written to {written}")
    if selection.excluded:
        side = write_excluded(selection.excluded, written.with_name(written.stem + ".excluded.csv"))
        click.echo(f"{len(selection.excluded)} pool images excluded (listed in {side}); for example:")
        for d in selection.excluded[:MAX_LISTED]:
            how = "same file/pixels as" if d.reason == "exact" else f"cosine {d.similarity:.3f} to"
            via = f" via image {d.via_id}" if d.via_id is not None else ""
            click.echo(f"  {d.path}: {how} {d.excluded_path}{via}")
    if link_to or copy_to:
        done, problems = link_or_copy([s.path for s in selection.images], link_to or copy_to,
                                      "link" if link_to else "copy")
        click.echo(f"{'linked' if link_to else 'copied'} {done} files into {link_to or copy_to}")
        for p in problems[:MAX_LISTED]:
            click.echo(f"  not placed: {p}", err=True)
    if report_path:
        from dinoret.retrieval.curate_report import write_curate_report

        path = write_curate_report(reader, report_data, selection, report_path, progress=not quiet)
        click.echo(f"report written to {path}")


def _check_outputs(out, link_to, copy_to) -> None:
    """Refuse bad output options before any work is done."""
    from dinoret.retrieval.selection_files import check_suffix

    check_suffix(out)
    if link_to and copy_to:
        raise click.UsageError("give --link-to or --copy-to, not both")


def _exclusion(reader, h, exclude, threshold, device, weights, quiet):
    """(eligible mask over h.ids, dropped list) for --exclude, or (None, [])."""
    import numpy as np

    dropped = _exclusion_list(reader, exclude, threshold, device, weights, quiet)
    if not dropped:
        return None, dropped
    return ~np.isin(h.ids, np.array([d.id for d in dropped], np.int64)), dropped


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
    from dinoret.core.devices import resolve_device
    from dinoret.retrieval.curate_clusters import index_clustering
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.sampling import balanced_sample
    from dinoret.retrieval.selection_files import selected_from_sample

    _check_outputs(out, link_to, copy_to)
    reader = open_index(index_dir)
    h, row, notes = index_clustering(reader, device=resolve_device(device))
    _warn(notes)
    eligible, dropped = _exclusion(reader, h, exclude, exclude_threshold, device, weights, quiet)
    positions = balanced_sample(h, target, strategy, seed, eligible)
    selection = selected_from_sample(reader, h, positions)
    selection.excluded = dropped
    selection.params = {"command": "sample", "target": target, "strategy": strategy, "seed": seed,
                        "exclude": exclude, "clustering": row.id, "index": str(reader.root)}
    report_data = {"hierarchy": h, "eligible": eligible, "chosen": positions, "title": f"balanced sample of {target}"}
    _selection_outputs(reader, selection, out, report_path, link_to, copy_to, report_data, quiet)


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
    import numpy as np

    from dinoret.core.devices import resolve_device
    from dinoret.core.errors import UserError
    from dinoret.retrieval.clusterings import load_clustering
    from dinoret.retrieval.curate_clusters import index_clustering
    from dinoret.retrieval.curate_retrieve import cluster_retrieval, load_seeds, sample_retrieval, selection_rows
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.selection_files import Selection

    _check_outputs(out, link_to, copy_to)
    reader = open_index(index_dir)
    if len(reader) == 0:
        raise UserError(f"the index at {reader.root} has no images")
    h = None
    if mode == "cluster" or load_clustering(reader.engine, reader.root) is not None:
        h, row, notes = index_clustering(reader, device=resolve_device(device))
        _warn(notes)
    seeds = load_seeds(reader, seeds, device=device, weights=weights, progress=not quiet)
    if h is not None:
        eligible, dropped = _exclusion(reader, h, exclude, exclude_threshold, device, weights, quiet)
    else:
        eligible, dropped = None, _exclusion_list(reader, exclude, exclude_threshold, device, weights, quiet)
    excluded_ids = np.array([d.id for d in dropped], np.int64)
    if mode == "sample":
        found = sample_retrieval(reader, seeds, k, excluded_ids)
        reason = "sample-retrieval"
        click.echo(f"{found.stats['retrieved']} pool images retrieved by {found.stats['seeds']} seeds (k={k}; "
                   f"{found.stats['collisions']} found by more than one seed)")
    else:
        found = cluster_retrieval(reader, h, seeds, min_hits, per_cluster, level, strategy, seed, eligible)
        reason = "cluster-retrieval"
        click.echo(f"{found.stats['clusters_used']} of the {found.stats['clusters_with_seeds']} level-{level} clusters "
                   f"holding seeds have at least {min_hits}; {found.stats['retrieved']} pool images retrieved from them")
    selection = Selection(selection_rows(reader, found, seeds, reason, h), h.levels if h is not None else [],
                          {"command": "retrieve", "mode": mode, "seeds": seeds.label, **found.stats,
                           "exclude": exclude, "index": str(reader.root)}, dropped)
    chosen = None if h is None else np.searchsorted(h.ids, found.ids[np.isin(found.ids, h.ids)])
    report_data = {"hierarchy": h, "eligible": eligible, "chosen": chosen, "seeds": seeds, "retrieved": found,
                   "title": f"{mode}-based retrieval from {len(seeds.paths)} seeds"}
    _selection_outputs(reader, selection, out, report_path, link_to, copy_to, report_data, quiet)


def _exclusion_list(reader, exclude, threshold, device, weights, quiet):
    if not exclude:
        return []
    from dinoret.retrieval.exclusion import DEFAULT_EXCLUDE_THRESHOLD, exclude_components

    return exclude_components(reader, exclude, DEFAULT_EXCLUDE_THRESHOLD if threshold is None else threshold,
                              device=device, weights=weights, progress=not quiet)
