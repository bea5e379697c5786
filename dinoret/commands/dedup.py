from __future__ import annotations

import click

from dinoret.options import device_option, index_option, weights_option

MAX_LISTED = 10


def _echo_groups(report: dict) -> None:
    groups = report["groups"]
    for g in groups[:MAX_LISTED]:
        flag = f"  [reviewed: {g['reviewed']}]" if g.get("reviewed") else ""
        click.echo(f"group {g['group']} ({len(g['members'])} images){flag}")
        for m in g["members"]:
            what = "other" if m["external"] else "keep " if m["is_keeper"] else f"{m['reason']:5s}"
            click.echo(f"  {what} {m['score']:.3f}  {m['width']}x{m['height']}  {m['path']}")
    if len(groups) > MAX_LISTED:
        click.echo(f"... {len(groups) - MAX_LISTED} more groups (write them all with --report FILE)")


def _list(engine) -> None:
    from dinoret.retrieval.reports import list_reports

    reports = list_reports(engine)
    if not reports:
        click.echo("no dedup reports yet: run `dinoret dedup`")
    for r in reports:
        against = f" against {r['against']}" if r["against"] else ""
        files = f"  {', '.join(r['files'])}" if r["files"] else ""
        click.echo(f"#{r['id']}  {r['created']}  threshold {r['threshold']}{against}: "
                   f"{r['n_groups']} groups, {r['n_images']} images{files}")


def _undo(manifest: str) -> None:
    from dinoret.retrieval.moves import undo_moves

    summary = undo_moves(manifest, progress=True)
    click.echo(f"restored {summary['restored']} files ({summary['already_in_place']} were already in place)")
    for p in summary["problems"]:
        click.echo(f"  not restored: {p}", err=True)
    if summary["problems"]:
        raise SystemExit(1)


def _move(report: dict, move_to: str, dry_run: bool, progress: bool) -> None:
    from dinoret.retrieval.moves import move_files, plan_moves

    members = [m for g in report["groups"] if g.get("reviewed") != "not_duplicates" for m in g["members"]]
    to_move = [m["path"] for m in members if not m["is_keeper"] and not m["external"]]
    root_paths = [m["path"] for m in members if not m["external"]]
    if not to_move:
        click.echo("nothing to move")
        return
    import os

    plan = plan_moves(to_move, move_to, root=os.path.commonpath([os.path.dirname(p) for p in root_paths]))
    manifest = move_files(plan, move_to, dry_run=dry_run, report_id=report.get("id"), progress=progress and not dry_run)
    statuses = [e["status"] for e in manifest["moves"]]
    if dry_run:
        for e in manifest["moves"]:
            click.echo(f"would move {e['src']} -> {e['dst']}" + ("" if e["status"] == "planned" else f"  ({e['status']})"))
        click.echo(f"dry run: {statuses.count('planned')} files would move to {move_to}; nothing moved")
        return
    moved = statuses.count("moved")
    click.echo(f"moved {moved} of {len(plan)} files to {move_to}; manifest {manifest['manifest']}")
    for e in manifest["moves"]:
        if e["status"] != "moved":
            click.echo(f"  not moved: {e['src']}: {e['status']}", err=True)
    click.echo(f"undo with: dinoret dedup --undo {manifest['manifest']}")
    click.echo("the index still lists the moved files until `dinoret index` runs again on the collection")


@click.command("dedup")
@index_option
@click.option("--threshold", "-t", type=click.FloatRange(-1, 1), default=None,
              help="Cosine similarity at or above which two images are duplicates [default: 0.95, see README].")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1),
              help="Neighbours looked at per image (a group can still grow larger through them).")
@click.option("--against", type=click.Path(exists=True),
              help="Another index directory or a folder of images: report index images that duplicate it.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Write the report to this file.")
@click.option("--format", "fmt", type=click.Choice(["html", "json", "csv"]), default=None,
              help="Report format [default: from the --report file name].")
@click.option("--keep", type=click.Choice(["largest", "oldest", "first"]), default="largest", show_default=True,
              help="Which image of a group is kept: most pixels, earliest mtime, or first path.")
@click.option("--split/--no-split", default=True, show_default=True,
              help="Split chained groups so that every member is itself similar to its keeper.")
@click.option("--method", type=click.Choice(["auto", "exact", "ivfpq", "faiss"]), default="auto", show_default=True,
              help="kNN engine: exact torch matmul, Faiss IVF-PQ with exact re-scoring (large sets on a CPU), "
                   "Faiss IVF-Flat, or chosen from N and the device.")
@click.option("--move-to", type=click.Path(file_okay=False), help="Move non-keepers here (relative paths kept).")
@click.option("--dry-run", is_flag=True, help="With --move-to: list what would move, move nothing.")
@click.option("--from-report", "from_report", type=click.IntRange(1),
              help="Use a stored report (e.g. after review in the web UI) instead of searching again.")
@click.option("--list", "list_only", is_flag=True, help="List the reports stored in the index.")
@click.option("--undo", "undo", type=click.Path(exists=True, dir_okay=False), metavar="MANIFEST",
              help="Move the files of a --move-to manifest back where they were.")
@weights_option
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(index_dir, threshold, k, against, report_path, fmt, keep, split, method, move_to, dry_run, from_report,
            list_only, undo, weights, device, quiet) -> None:
    """Find exact and near-duplicate images in the index, report them, and optionally move
    the extra copies aside (never deleted; undoable).

    Exact copies (same bytes, or same pixels in another format) come first, then near
    duplicates: images whose cosine similarity is at least the threshold. One keeper per
    group by --keep; every other member is listed with its similarity to the keeper.
    Without --move-to nothing on disk changes. Reports are stored in the index (--list).

    \b
    Example:
      dinoret dedup --report dups.html
      dinoret dedup --against ./test_set --report leaks.csv     # test images leaked into the index
      dinoret dedup --move-to ./dups --dry-run                  # what would move
      dinoret dedup --move-to ./dups                            # move, write a manifest
      dinoret dedup --undo ./dups/dinoret-moves-20250101-120000.json
      dinoret dedup --list
    """
    if undo:
        _undo(undo)
        return
    if dry_run and not move_to:
        raise click.UsageError("--dry-run goes with --move-to (without it nothing moves anyway)")

    from dinoret.retrieval.dedup import DEFAULT_THRESHOLD, against_source, find_duplicates
    from dinoret.retrieval.index import open_index
    from dinoret.retrieval.report_files import report_format, write_report
    from dinoret.retrieval.reports import add_report_files, load_report, save_report

    reader = open_index(index_dir)
    if list_only:
        _list(reader.engine)
        return
    if from_report:
        report = load_report(reader.engine, from_report)
    else:
        source, label = against_source(against) if against else (None, None)
        result = find_duplicates(
            reader, threshold=DEFAULT_THRESHOLD if threshold is None else threshold, k=k, keep=keep,
            against=source, against_label=label, split=split, device=device, method=method, weights=weights,
            progress=not quiet,
        )
        report = load_report(reader.engine, save_report(reader.engine, result))
    if report_path or fmt:
        path = report_path or f"dinoret-dedup-{report['id']}.{fmt}"
        written = write_report(report, path, report_format(path, fmt), progress=not quiet)
        add_report_files(reader.engine, report["id"], [str(written.resolve())])
        click.echo(f"report written to {written}")
    _echo_groups(report)
    non_keepers = sum(1 for g in report["groups"] for m in g["members"] if not m["is_keeper"])
    exact = sum(1 for g in report["groups"] for m in g["members"] if not m["is_keeper"] and m["reason"] == "exact")
    click.echo(f"report #{report['id']}: {len(report['groups'])} groups, {non_keepers} duplicates "
               f"({exact} exact, {non_keepers - exact} near) among {report['stats'].get('images', len(reader))} images, "
               f"threshold {report['params']['threshold']}")
    if move_to:
        _move(report, move_to, dry_run, progress=not quiet)
    elif non_keepers:
        click.echo("nothing moved: add --move-to DIR to move the non-keepers aside (undoable)")
