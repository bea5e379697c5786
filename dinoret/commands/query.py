from __future__ import annotations

import json

import click

from dinoret.options import device_option, index_option, weights_option


@click.command("query")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@index_option
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1), help="Results per query.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON output: [{query, results: [{rank, id, path, score}]}] (and error, for a file that cannot be read).")
@click.option("--rerank/--no-rerank", default=True, show_default=True,
              help="Re-score IVF-PQ candidates with exact cosine from the stored vectors.")
@weights_option
@device_option
def command(images, index_dir, k, as_json, rerank, weights, device) -> None:
    """The indexed images most similar to each query image (cosine similarity).

    Queries are embedded exactly as the collection was: same model, weights and
    preprocessing (the weights recorded in the index, or --weights with the same sha256).
    A query file that cannot be read gets one `error:` line on stderr, the others still get
    their results, and the exit status is then 2.

    \b
    Example:
      dinoret query photo.jpg -k 5
      dinoret query a.jpg b.png --json > hits.json
    """
    import os

    import dinoret
    from dinoret.api.inputs import UnreadableImage
    from dinoret.console import shown

    idx = dinoret.open(index_dir, device=device, weights=weights)
    opened = []  # per query: its image, or why it cannot be read (one bad file costs the others nothing)
    for q in images:
        try:
            opened.append(idx.read_image(q))
        except UnreadableImage as e:
            opened.append(e.reason)
    found = iter(idx.search([im for im in opened if not isinstance(im, str)], k=k, rerank=rerank))
    results = [im if isinstance(im, str) else next(found) for im in opened]
    for q, res in zip(images, results):
        if isinstance(res, str):
            click.echo(shown(f"error: cannot read query image {q}: {res}"), err=True)
    if as_json:
        out = [{"query": os.path.abspath(q), "error": res, "results": []} if isinstance(res, str)
               else {"query": os.path.abspath(q), "results": [h.__dict__ for h in res]} for q, res in zip(images, results)]
        click.echo(json.dumps(out, indent=2))
    else:
        for q, hits in zip(images, results):
            if isinstance(hits, str):
                continue
            click.echo(f"query: {shown(q)}")
            click.echo(f"{'rank':>4}  {'score':>7}  path")
            for h in hits:
                click.echo(f"{h.rank:>4}  {h.score:7.4f}  {shown(h.path)}")
    if any(isinstance(res, str) for res in results):
        raise SystemExit(2)
