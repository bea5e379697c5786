from __future__ import annotations

import click

from dinoret.console import shown
from dinoret.core.errors import UserError
from dinoret.dedup_jobs import check_flags
from dinoret.options import device_option, index_option, weights_option

MAX_LISTED = 10


def _echo_groups(report: dict) -> None:
    groups = report["groups"]
    for g in groups[:MAX_LISTED]:
        flag = f"  [reviewed: {g['reviewed']}]" if g.get("reviewed") else ""
        click.echo(f"group {g['group']} ({len(g['members'])} images){flag}")
        for m in g["members"]:
            what = "other" if m["external"] else "keep " if m["is_keeper"] else f"{m['reason']:5s}"
            click.echo(f"  {what} {m['score']:.3f}  {m['width']}x{m['height']}  {shown(m['path'])}")
    if len(groups) > MAX_LISTED:
        click.echo(f"... {len(groups) - MAX_LISTED} more groups (write them all with --report FILE)")


def _list(reports: list[dict]) -> None:
    if not reports:
        click.echo("no dedup reports yet: run `dinoret dedup`")
    for r in reports:
        against = f" against {shown(r['against'])}" if r["against"] else ""
        files = f"  {', '.join(shown(f) for f in r['files'])}" if r["files"] else ""
        click.echo(f"#{r['id']}  {r['created']}  threshold {r['threshold']}{against}: "
                   f"{r['n_groups']} groups, {r['n_images']} images{files}")


def _undo(manifest: str, progress: bool) -> None:
    import dinoret

    summary = dinoret.undo_moves(manifest, progress=progress)
    click.echo(f"restored {summary['restored']} files ({summary['already_in_place']} were already in place)")
    for p in summary["problems"]:
        click.echo(f"  not restored: {shown(p)}", err=True)
    if summary["problems"]:
        raise SystemExit(1)


def _move(groups, move_to: str, dry_run: bool, progress: bool) -> None:
    manifest = groups.move_to(move_to, dry_run=dry_run, allow_inside=True, progress=progress)  # checked before the search
    if not manifest["moves"]:
        click.echo("nothing to move")
        return
    statuses = [e["status"] for e in manifest["moves"]]
    if dry_run:
        for e in manifest["moves"]:
            click.echo(f"would move {shown(e['src'])} -> {shown(e['dst'])}"
                       + ("" if e["status"] == "planned" else f"  ({e['status']})"))
        click.echo(f"dry run: {statuses.count('planned')} files would move to {shown(move_to)}; nothing moved")
        return
    moved = statuses.count("moved")
    click.echo(f"moved {moved} of {len(statuses)} files to {shown(move_to)}; manifest {shown(manifest['manifest'])}")
    for e in manifest["moves"]:
        if e["status"] != "moved":
            click.echo(f"  not moved: {shown(e['src'])}: {shown(e['status'])}", err=True)
    click.echo(f"undo with: dinoret dedup --undo {shown(manifest['manifest'])}")
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
@click.option("--method", type=click.Choice(["auto", "exact", "ivf", "ivfpq", "faiss"]), default="auto", show_default=True,
              help="kNN engine: every pair (exact), exact products within each vector's nearest IVF lists "
                   "(ivf: large sets on a CPU), Faiss IVF-PQ or IVF-Flat, or chosen from N and the device.")
@click.option("--move-to", type=click.Path(file_okay=False), help="Move non-keepers here (relative paths kept).")
@click.option("--dry-run", is_flag=True, help="With --move-to: list what would move, move nothing.")
@click.option("--allow-inside", is_flag=True,
              help="With --move-to: allow a folder inside the indexed folders (the next index run would "
                   "index the moved files again).")
@click.option("--from-report", "from_report", type=click.IntRange(1, 2**63 - 1),
              help="Use a stored report (e.g. after review in the web UI) instead of searching again.")
@click.option("--list", "list_only", is_flag=True, help="List the reports stored in the index.")
@click.option("--undo", "undo", type=click.Path(exists=True, dir_okay=False), metavar="MANIFEST",
              help="Move the files of a --move-to manifest back where they were.")
@weights_option
@device_option
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(index_dir, threshold, k, against, report_path, fmt, keep, split, method, move_to, dry_run, allow_inside,
            from_report, list_only, undo, weights, device, quiet) -> None:
    """Find exact and near-duplicate images in the index, report them, and optionally move
    the extra copies aside (never deleted; undoable).

    Exact copies (same bytes, or same pixels in another format) come first, then near
    duplicates: images whose cosine similarity is at least the threshold. One keeper per
    group by --keep; every other member is listed with its similarity to the keeper.
    Without --move-to nothing on disk changes. Reports are stored in the index (--list).

    One job per run: a search (the default), --against, --from-report (each may add
    --report and --move-to), --list or --undo. Flags another job needs are refused.

    \b
    Example:
      dinoret dedup --report dups.html
      dinoret dedup --against ./test_set --report leaks.csv     # test images leaked into the index
      dinoret dedup --move-to ./dups --dry-run                  # what would move
      dinoret dedup --move-to ./dups                            # move, write a manifest
      dinoret dedup --undo ./dups/dinoret-moves-20250101-120000.json
      dinoret dedup --list
    """
    job = check_flags(click.get_current_context())
    if job == "undo":
        _undo(undo, progress=not quiet)
        return

    import dinoret
    from dinoret.api.groups import check_report_path

    idx = dinoret.open(index_dir, device=device, weights=weights)
    if job == "list_only":
        _list(idx.reports())
        return
    if idx.read_only and job != "from_report":
        raise UserError(f"the index at {idx.root} is read-only: dedup stores its report there "
                        "(--list and --from-report still work)")
    idx.writable = not idx.read_only
    if move_to and not allow_inside:
        idx.check_move_to(move_to)  # before the search: a refused run stores no report
    if report_path:
        check_report_path(report_path, fmt)  # before the search, not after
    if from_report:
        groups = idx.report(from_report)
    else:
        groups = idx.dedup(threshold=threshold, k=k, keep=keep, against=against, split=split, method=method,
                           progress=not quiet)
    report = groups.to_dict()
    if report_path or fmt:
        path = report_path or f"dinoret-dedup-{report['id']}.{fmt}"
        try:
            written = groups.write(path, fmt, progress=not quiet)
        except UserError as e:
            raise UserError(f"{e} (it is stored in the index as report #{report['id']}: write it later with "
                            f"--from-report {report['id']} --report FILE)") from None
        click.echo(f"report written to {shown(written)}")
    _echo_groups(report)
    non_keepers = sum(1 for g in report["groups"] for m in g["members"] if not m["is_keeper"])
    exact = sum(1 for g in report["groups"] for m in g["members"] if not m["is_keeper"] and m["reason"] == "exact")
    click.echo(f"report #{report['id']}: {len(report['groups'])} groups, {non_keepers} duplicates "
               f"({exact} exact, {non_keepers - exact} near) among {report['stats'].get('images', len(idx))} images, "
               f"threshold {report['params']['threshold']}")
    if move_to:
        _move(groups, move_to, dry_run, progress=not quiet)
    elif non_keepers:
        click.echo("nothing moved: add --move-to DIR to move the non-keepers aside (undoable)")
